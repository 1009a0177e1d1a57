"""Tiled encoding on real images: the same Grams, losses and gradients as whole, and no seams."""

import dataclasses
import itertools

import pytest
import torch

from pipeline.core.losses import content_loss, gram, statistic_names, style_loss, style_statistics
from pipeline.core.optimize import Objective, Settings, TiledObjective, levels, style_targets, stylize
from pipeline.core.tiles import border_mask, grid, seam_ratio, tiled_statistics
from pipeline.media.images import read_image
from pipeline.render.memory import HISTORY, MIN_TILE, needed_bytes, tile_plan

SETTINGS = Settings(size=320, scales=1, iterations=8)


def _pair(shared, size=320):
    content = read_image(shared / "content" / "chelsea.png", size)
    style = read_image(shared / "style" / "starry_night.jpg")
    return content, style


def test_grid_pieces_partition_the_image_and_crops_stay_within_the_tile():
    for (shape, tile), phase in itertools.product(
        [((320, 213), 256), ((1000, 2999), 1024), ((96, 96), 64)], (0, 0.3, 0.9)
    ):
        tiles = grid(shape, tile, phase)
        cover = torch.zeros(shape, dtype=torch.int32)
        for t in tiles:
            cover[t.rows[0] : t.rows[1], t.cols[0] : t.cols[1]] += 1
            assert t.crop_rows[1] - t.crop_rows[0] <= tile and t.crop_cols[1] - t.crop_cols[0] <= tile
            assert t.crop_rows[0] % 16 == 0 and t.crop_cols[0] % 16 == 0  # every layer's grid stays in step
        assert bool((cover == 1).all()), shape


def test_tiled_statistics_equal_the_whole_images(shared, model):
    """Grams and (for the Wasserstein loss) means, summed over tiles."""
    _, style = _pair(shared)
    image = torch.nn.functional.interpolate(style, size=(300, 380), mode="bilinear", antialias=True)
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    names = statistic_names(layers, "wasserstein")
    with torch.inference_mode():
        whole = style_statistics(model(image), layers, "wasserstein")
        tiled = tiled_statistics(model, image, names, grid((300, 380), 256, 0.4))
    assert len(grid((300, 380), 256)) > 1 and sorted(tiled) == sorted(whole) == sorted(names)
    assert torch.equal(whole["relu3_1"], gram(model(image)["relu3_1"]))
    for name in names:
        assert float((tiled[name] - whole[name]).norm() / whole[name].norm()) < 1e-3, name


@pytest.mark.parametrize("style_loss", ["gram", "wasserstein"])
def test_tiled_objective_has_the_whole_images_loss_and_gradient(shared, model, style_loss):
    content, style = _pair(shared)
    settings = dataclasses.replace(SETTINGS, tile_side=256, style_loss=style_loss)
    h, w = content.shape[-2:]
    targets = style_targets(model, [(style, 1.0)], h * w, list(settings.style_layers), loss=style_loss)
    start = read_image(shared / "content" / "coffee.png", 320)[..., :h, :w]
    whole, tiled = start.clone().requires_grad_(), start.clone().requires_grad_()
    expected = Objective(model, settings, content, targets).backward(whole)
    objective = TiledObjective(model, settings, content, targets)
    assert len(grid((h, w), 256)) == 6  # 2 x 3 pieces of at most 128 px
    for _ in range(2):  # the second evaluation has its grid moved
        tiled.grad = None
        parts = objective.backward(tiled)
        assert torch.allclose(parts, expected, rtol=1e-4)
        assert float((tiled.grad - whole.grad).norm() / whole.grad.norm()) < 0.01


@pytest.mark.slow
def test_a_tiled_result_matches_the_untiled_one_and_shows_no_seams(shared, model):
    """Coarse to fine, the finest level tiled: its losses within 5 % of the untiled run's, and the
    gradient energy along the tile cuts at most 1.10x the rest's, and no more than the untiled image's there +0.05."""
    content, style = _pair(shared)
    settings = dataclasses.replace(SETTINGS, scales=2)
    shapes = [lv.shape for lv in levels(tuple(content.shape[-2:]), settings)]
    targets = [style_targets(model, [(style, 1.0)], h * w, list(settings.style_layers)) for h, w in shapes]
    whole = stylize(model, content, targets, settings)
    tiled = stylize(model, content, targets, dataclasses.replace(settings, tile_side=256))
    assert tiled.image.shape == content.shape
    with torch.inference_mode():
        fw, ft, fc = model(whole.image), model(tiled.image), model(content)
        for loss in (
            lambda f: content_loss(f, {"relu4_2": fc["relu4_2"]}),
            lambda f: style_loss(f, targets[-1], settings.style_layers),
        ):
            assert float(loss(ft)) == pytest.approx(float(loss(fw)), rel=0.05)
    mask = border_mask(grid(tuple(content.shape[-2:]), 256))
    ratio = seam_ratio(tiled.image, mask)
    assert ratio <= 1.10  # the margin docs/large-images.md states: cuts carry at most 1.10x the energy elsewhere
    assert ratio <= seam_ratio(whole.image, mask) + 0.05


def test_levels_refine_above_the_optimised_size_up_to_the_contents_own():
    settings = Settings(size=256, scales=2, iterations=40)
    assert [(lv.shape, lv.iterations) for lv in levels((600, 900), settings)] == [
        ((85, 128), 40),
        ((171, 256), 40),
        ((341, 512), 10),
        ((600, 900), 10),
    ]
    assert [lv.shape for lv in levels((171, 256), settings)] == [(86, 128), (171, 256)]  # nothing to refine
    assert [lv.iterations for lv in levels((600, 900), dataclasses.replace(settings, refine_iterations=3))][2:] == [
        3,
        3,
    ]


def test_tile_plan_tiles_only_what_does_not_fit_and_sizes_tiles_to_the_memory():
    gib = 2**30
    assert tile_plan(24 * gib, (1024, 1024), "lbfgs") == (0, HISTORY)  # fits whole
    assert tile_plan(None, (8192, 8192), "lbfgs") == (0, HISTORY)  # nothing known: as before
    tile, pairs = tile_plan(20 * gib, (4096, 4096), "lbfgs")
    assert MIN_TILE <= tile < 4096 and tile % 16 == 0 and pairs < HISTORY
    assert needed_bytes((tile, tile), "adam") + 4096 * 4096 * (256 + 24 * pairs) <= 0.8 * 20 * gib
    smaller, _ = tile_plan(8 * gib, (4096, 4096), "lbfgs")
    assert MIN_TILE <= smaller < tile
    assert tile_plan(24 * gib, (1024, 1024), "lbfgs", tile=512) == (512, HISTORY)  # forced
