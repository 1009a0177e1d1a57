"""The VGG-19 (or VGG-16) feature extractor: layer names, preprocessing and named layer taps.

Images enter as RGB in [0, 1], shape (N, 3, H, W); the preprocessing that the
weight source expects (Caffe BGR 0-255 minus means, or torchvision mean/std)
is part of the model, so callers never see it. Where the weights come from is
`pipeline.media.weights`'.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.packed import use_packed
from pipeline.core.winograd import use_winograd

# Convs per block of each network; layer names follow torchvision's `vggNN().features` order.
BLOCKS = {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3)}
TITLES = {"vgg19": "VGG-19", "vgg16": "VGG-16"}


@cache
def layer_names(arch: str = "vgg19") -> tuple[str, ...]:
    """`conv1_1`, `relu1_1`, …, `pool5` of `arch`, in `features` order."""
    return tuple(
        name
        for block, convs in enumerate(BLOCKS[arch], start=1)
        for name in (*(f"{kind}{block}_{i}" for i in range(1, convs + 1) for kind in ("conv", "relu")), f"pool{block}")
    )


def layer_index(arch: str = "vgg19") -> dict[str, int]:
    """Layer name to its position in `arch`'s `features`."""
    return {name: i for i, name in enumerate(layer_names(arch))}


def layer_error(names: Iterable[str], arch: str = "vgg19", where: str = "") -> str | None:
    """The error for the first of `names` that `arch` has no layer of, with the nearest name it has
    ("VGG-16 has no layer 'relu5_4' (optimize.style_layers); did you mean 'relu5_3'?"), or None.
    `where` names the setting in the message."""
    index = layer_index(arch)
    missing = next((n for n in names if n not in index), None)
    if missing is None:
        return None
    near = difflib.get_close_matches(missing, index, n=1)
    return f"{TITLES[arch]} has no layer {missing!r}{f' ({where})' if where else ''}" + (
        f"; did you mean {near[0]!r}?" if near else ""
    )


LAYER_NAMES = layer_names("vgg19")
LAYER_INDEX = layer_index("vgg19")
CONV_NAMES = tuple(n for n in LAYER_NAMES if n.startswith("conv"))

Tap = Callable[[str, torch.Tensor], torch.Tensor]  # (layer name, activation) -> what goes on in its place

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Average pooling shrinks activations against max pooling (RMS at relu4_2: 0.34x with the bundled
# weights), so, as crowsonkb's style_transfer does, each average pool is rescaled. crowsonkb's 2.0
# suits torchvision's weights; with the bundled ones 1.45 keeps relu2_1..relu4_2 within 20 % of max
# pooling's RMS on each of chelsea, coffee and astronaut at 128 px (2.0 gives 1.5x-2.8x).
AVG_POOL_SCALE = 1.45


def pooling_identity(pooling: str) -> str:
    """A stable id of a pooling choice, its rescale included (for job and cache keys)."""
    return pooling if pooling == "max" else f"{pooling}x{AVG_POOL_SCALE}"


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


def features(count: int, arch: str = "vgg19") -> nn.Sequential:
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

    `forward(x)` returns {layer name: activation} for the requested layers; `forward(x, tap)` lets `tap` stand
    something in for each (the optimiser makes its Grams there: see `losses.tapped_gram`).
    """

    def __init__(
        self,
        weights: Weights,
        layers: Iterable[str],
        pooling: str = "max",
        winograd: bool = False,
        dtype: torch.dtype = torch.float32,
        packed: bool = False,
    ) -> None:
        """`winograd` computes the wide 3x3 convs with Winograd F(4x4, 3x3), faster on CPUs (float32 only).
        `packed` hands oneDNN the other convs' weights packed once, each with its ReLU (CPU only: see `packed`).
        `dtype` is the precision of the layers (bfloat16 or float16 for reduced precision): the image is
        preprocessed in float32, then cast, and the features come out in `dtype`. Reduced-precision layers run
        channels-last, which their kernels prefer. The figures: docs/performance.md."""
        super().__init__()
        if winograd and dtype != torch.float32:
            raise ValueError(f"the Winograd layers are float32 only, not {dtype}")
        self.layers = tuple(dict.fromkeys(layers))
        error = layer_error(self.layers, weights.arch)
        if error:
            raise ValueError(error)
        index = layer_index(weights.arch)
        taps = {index[n]: n for n in self.layers}
        last = max(taps)
        body = features(last + 1, weights.arch)
        body.load_state_dict({k: v for k, v in weights.state.items() if int(k.split(".")[0]) <= last})
        for i, module in enumerate(body):
            if isinstance(module, nn.ReLU):  # in place only where no tap sees the input
                body[i] = nn.ReLU(inplace=i - 1 not in taps)
            if pooling == "avg" and isinstance(module, nn.MaxPool2d):
                body[i] = ScaledAvgPool2d()
        self.preprocess = Preprocess(weights.caffe)
        self.dtype = dtype
        self.layout = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
        body = use_winograd(body) if winograd else body
        body = use_packed(body, set(taps)) if packed else body
        self.body = body.to(dtype=dtype, memory_format=self.layout)
        self.identity = (
            weights.identity if dtype == torch.float32 else f"{weights.identity}@{str(dtype).removeprefix('torch.')}"
        )
        self.pooling = pooling_identity(pooling)
        self._taps = taps
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, tap: Tap | None = None) -> dict[str, torch.Tensor]:
        """{layer name: activation} for the requested layers; `tap(name, activation)`, where given, returns what
        stands for each of them, in the result and for the layers after it (see `losses.tapped_gram`)."""
        out: dict[str, torch.Tensor] = {}
        x = self.preprocess(x).to(dtype=self.dtype, memory_format=self.layout)
        for i, module in enumerate(self.body):
            x = module(x)
            name = self._taps.get(i)
            if name is not None:
                x = out[name] = tap(name, x) if tap else x
        return out
