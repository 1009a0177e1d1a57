"""Optical flow, warping, reliability masks and temporal losses on real photos and real footage.

Synthetic pans crop windows of a real photo at offsets moved by a known integer
(dx, dy) per frame, so frame_{t+1}(p) = frame_t(p + (dx, dy)): the true back
flow is the constant (dx, dy) and the true fwd flow is (-dx, -dy).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.temporal import flow_tensor, is_cut, long_term_masks, reliability, temporal_loss, warp, warp_errors
from pipeline.media import flow

H, W = 96, 128


def tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) to (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div(255)


def constant_flow(dx: float, dy: float, shape: tuple[int, int] = (H, W)) -> torch.Tensor:
    return torch.tensor([float(dx), float(dy)]).view(1, 2, 1, 1).expand(1, 2, *shape).contiguous()


def pan(
    image: np.ndarray, shift: tuple[int, int], frames: int = 2, origin: tuple[int, int] = (24, 24)
) -> list[np.ndarray]:
    """`frames` H x W windows of `image`, frame t at origin + t * shift (x, y)."""
    (dx, dy), (ox, oy) = shift, origin
    return [image[oy + t * dy : oy + t * dy + H, ox + t * dx : ox + t * dx + W] for t in range(frames)]


def stylise(image: np.ndarray) -> np.ndarray:
    """A fixed, non-trivial 'style': blur, then a colour map of the luminance, mixed with edges."""
    gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (0, 0), 1.5)
    colours = cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_TWILIGHT), cv2.COLOR_BGR2RGB)
    edges = cv2.Canny(gray, 50, 150)[..., None]
    return np.where(edges > 0, 255 - colours, colours).astype(np.uint8)


def estimated(a: np.ndarray, b: np.ndarray, method: str = "dis") -> tuple[torch.Tensor, torch.Tensor]:
    """(back, mask) of frame b from estimated flows."""
    back, fwd = (flow_tensor(f) for f in flow.pair(a, b, method))
    return back, reliability(back, fwd)


def masked_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x - y).pow(2) * mask).sum().item() / (x.shape[1] * mask.sum().item())


@pytest.fixture(scope="module")
def photos(shared: Path) -> dict[str, np.ndarray]:
    """The real content photos as RGB uint8, resized to 160 x 240 (room for the pans)."""
    names = ("coffee", "chelsea", "astronaut")
    return {name: flow.read_rgb(shared / "content" / f"{name}.png", (160, 240)) for name in names}


def video_frames(path: Path, start: int, count: int) -> list[np.ndarray]:
    """`count` consecutive frames of a video from `start`, RGB at 72 x 128."""
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(count):
        ok, frame = capture.read()
        assert ok
        frames.append(cv2.cvtColor(cv2.resize(frame, (128, 72), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


# --- flow estimation -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("shift", [(3, 2), (-2, 4)])
def test_estimate_recovers_a_pan(photos, method, shift):
    a, b = pan(photos["coffee"], shift)
    back, fwd = flow.pair(a, b, method)
    assert back.shape == (H, W, 2) and back.dtype == np.float32
    interior = (slice(16, -16), slice(16, -16))
    back_error = np.linalg.norm(back[interior] - np.array(shift), axis=-1)
    fwd_error = np.linalg.norm(fwd[interior] + np.array(shift), axis=-1)
    assert np.median(back_error) < 0.5
    assert np.median(fwd_error) < 0.5


def test_estimate_rejects_an_unknown_method(photos):
    a, b = pan(photos["coffee"], (3, 2))
    with pytest.raises(ValueError, match="dis, farneback"):
        flow.estimate(a, b, "lucas-kanade")


# --- warping with the true flow --------------------------------------------------------------


@pytest.mark.parametrize("shift", [(3, 2), (-2, -3)])
def test_true_flow_warps_frame_onto_next_where_reliable(photos, shift):
    dx, dy = shift
    a, b = pan(photos["coffee"], shift)
    back, fwd = constant_flow(dx, dy), constant_flow(-dx, -dy)
    mask = reliability(back, fwd)
    entered = torch.zeros(1, 1, H, W, dtype=torch.bool)  # the strips that came into view: no source in a
    entered[..., :, slice(W - dx, None) if dx > 0 else slice(None, -dx)] = True
    entered[..., slice(H - dy, None) if dy > 0 else slice(None, -dy), :] = True
    assert torch.equal(mask, (~entered).float())
    assert masked_mse(warp(tensor(a), back), tensor(b), mask) < 1e-4


def test_stylised_pan_warps_with_true_and_estimated_flow(photos):
    shift = (3, 2)
    content = pan(photos["chelsea"], shift)
    styled = [tensor(s) for s in pan(stylise(photos["chelsea"]), shift)]
    back, fwd = constant_flow(*shift), constant_flow(-shift[0], -shift[1])
    mask = reliability(back, fwd)
    assert masked_mse(warp(styled[0], back), styled[1], mask) < 1e-4

    back, mask = estimated(*content)  # the pipeline's way: flow of the content, applied to the stylised frames
    assert mask.mean() > 0.8
    [warped] = warp_errors(styled, [back], [mask])
    [unwarped] = warp_errors(styled, [torch.zeros_like(back)], [mask])
    assert unwarped > 0.01
    assert warped < 0.2 * unwarped


def test_mask_drops_the_region_a_moving_patch_uncovers(photos):
    background = photos["chelsea"][30 : 30 + H, 40 : 40 + W]
    patch = photos["astronaut"][40:80, 90:130]  # textured 40 x 40
    top, left, step = 28, 36, 8
    frames = []
    for t in range(2):
        frame = background.copy()
        frame[top : top + 40, left + t * step : left + t * step + 40] = patch
        frames.append(frame)
    back, mask = estimated(*frames)
    uncovered = mask[0, 0, top + 4 : top + 36, left : left + step]  # background again in b, under the patch in a
    assert uncovered.mean() < 0.3
    far = torch.ones(H, W, dtype=torch.bool)
    far[top - 16 : top + 56, left - 16 : left + step + 56] = False
    assert mask[0, 0][far].mean() > 0.9


# --- scene cuts ------------------------------------------------------------------------------


def test_is_cut_separates_pans_from_cuts(photos):
    for name, image in photos.items():
        a, b = pan(image, (4, -3), origin=(24, 40))
        assert not is_cut(tensor(a), tensor(b), *estimated(a, b)), name
    names = list(photos)
    for first, second in zip(names, names[1:] + names[:1]):
        a, b = pan(photos[first], (0, 0))[0], pan(photos[second], (0, 0))[0]
        assert is_cut(tensor(a), tensor(b), *estimated(a, b)), (first, second)


@pytest.mark.parametrize("start", [0, 1, 77])
def test_is_cut_keeps_real_camera_motion(shared, start):
    # 77 -> 78: fast motion, only 42% of the pixels reliable: why min_reliable is 0.2, not 0.5
    a, b = video_frames(shared / "video" / "cockatoo.mp4", start, 2)
    back, mask = estimated(a, b)
    assert not is_cut(tensor(a), tensor(b), back, mask)
    [warped] = warp_errors([tensor(a), tensor(b)], [back], [mask])
    assert masked_mse(tensor(a), tensor(b), mask) > 5 * warped  # the frames really moved


# --- tensor functions against hand computations ----------------------------------------------


def test_warp_with_zero_flow_is_identity(photos):
    image = tensor(pan(photos["coffee"], (0, 0))[0])
    assert torch.allclose(warp(image, torch.zeros(1, 2, H, W)), image, atol=1e-6)


def test_warp_samples_between_pixels_and_repeats_borders():
    image = torch.tensor([[[[0.0, 2.0, 4.0]]]])  # (1, 1, 1, 3)
    half = torch.tensor([[[[0.5, 0.5, 0.5]], [[0.0, 0.0, 0.0]]]])  # x + 0.5
    assert torch.allclose(warp(image, half), torch.tensor([[[[1.0, 3.0, 4.0]]]]))
    batch = torch.cat([image, 2 * image])  # one flow serves a batch
    assert torch.allclose(warp(batch, half)[1], torch.tensor([[[2.0, 6.0, 8.0]]]))


def test_reliability_drops_motion_boundaries_and_out_of_frame_by_hand():
    back = torch.zeros(1, 2, 3, 6)
    back[:, 0, :, 3:] = 0.5  # a step in x-motion between columns 2 and 3
    mask = reliability(back, torch.zeros_like(back))
    # column 2: forward difference 0.5² > 0.002; column 5: 5 + 0.5 lies past the last column
    assert torch.equal(mask[0, 0], torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 0.0]]).expand(3, 6))


def test_long_term_masks_keep_each_pixel_for_the_nearest_frame_by_hand():
    c1 = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    c2 = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    c4 = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 4)
    long1, long2, long4 = long_term_masks([c1, c2, c4])
    assert torch.equal(long1.flatten(), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(long2.flatten(), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.equal(long4.flatten(), torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert long_term_masks([]) == []


def test_temporal_loss_by_hand():
    image = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])  # (2, 2, 1, 2)
    previous = torch.zeros_like(image)
    near = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])  # (2, 1, 1, 2)
    far = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 0.0]]]])
    # element 0: near sees 1² of 4 values -> 0.25; far sees 2² -> 1.0. Element 1: image equals previous.
    assert torch.allclose(temporal_loss(image, [(previous, near), (previous, far)]), torch.tensor([1.25, 0.0]))
    assert torch.equal(temporal_loss(image, []), torch.zeros(2))


def test_warp_errors_on_a_pan(photos):
    shift = (3, 2)
    frames = [tensor(f) for f in pan(photos["coffee"], shift, frames=3)]
    back = constant_flow(*shift)
    mask = reliability(back, constant_flow(-shift[0], -shift[1]))
    zero = torch.zeros_like(back)
    assert warp_errors([frames[0], frames[0]], [zero], [torch.ones_like(mask)]) == [pytest.approx(0.0, abs=1e-12)]
    assert warp_errors(frames[:2], [back], [torch.zeros_like(mask)]) == [0.0]  # empty mask
    true_flow = warp_errors(frames, [back, back], [mask, mask])
    no_flow = warp_errors(frames, [zero, zero], [mask, mask])
    assert len(true_flow) == 2
    assert max(true_flow) < 1e-4
    assert min(no_flow) > 0.01


# --- the flow cache --------------------------------------------------------------------------


def write_rgb(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def test_flow_cache_reads_back_from_disk(photos, tmp_path, monkeypatch):
    a, b = pan(photos["coffee"], (3, 2))
    a_path, b_path = write_rgb(tmp_path / "a.png", a), write_rgb(tmp_path / "b.png", b)
    inputs = {p: p.read_bytes() for p in (a_path, b_path)}
    root = tmp_path / "flows"

    back, fwd = flow.FlowCache(root).get(a_path, b_path, (H, W), "dis")
    files = list(root.iterdir())
    assert [f.suffix for f in files] == [".npz"]  # one entry, no stray temporary
    direct_back, direct_fwd = flow.pair(a, b)
    assert np.allclose(back, direct_back, atol=0.02) and np.allclose(fwd, direct_fwd, atol=0.02)  # float16

    def no_estimate(*args, **kwargs):
        raise AssertionError("estimate called on a cache hit")

    with monkeypatch.context() as patch:
        patch.setattr(flow, "estimate", no_estimate)
        again = flow.FlowCache(root).get(a_path, b_path, (H, W), "dis")
    assert np.array_equal(again[0], back) and np.array_equal(again[1], fwd)
    assert again[0].dtype == np.float32

    files[0].write_bytes(b"not a zip file")
    recomputed = flow.FlowCache(root).get(a_path, b_path, (H, W), "dis")
    assert np.array_equal(recomputed[0], back) and np.array_equal(recomputed[1], fwd)
    with np.load(files[0]) as data:
        assert data["back"].dtype == np.float16

    assert {p: p.read_bytes() for p in inputs} == inputs


def test_flow_cache_keys_on_shape_and_method_and_resizes(photos, tmp_path):
    a, b = pan(photos["coffee"], (4, 2))
    a_path, b_path = write_rgb(tmp_path / "a.png", a), write_rgb(tmp_path / "b.png", b)
    root = tmp_path / "flows"
    cache = flow.FlowCache(root)
    half, _ = cache.get(a_path, b_path, (H // 2, W // 2), "dis")
    assert half.shape == (H // 2, W // 2, 2)
    assert np.median(np.linalg.norm(half[8:-8, 8:-8] - [2, 1], axis=-1)) < 0.5  # the pan at half size
    cache.get(a_path, b_path, (H, W), "dis")
    cache.get(a_path, b_path, (H, W), "farneback")
    assert len(list(root.glob("*.npz"))) == 3

    uncached, _ = flow.FlowCache(None).get(a_path, b_path, (H // 2, W // 2), "dis")
    assert np.allclose(uncached, half, atol=0.02)


def test_flow_cache_names_an_unreadable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: cannot read image"):
        flow.FlowCache(None).get(bad, bad, (H, W), "dis")
