"""The style target cache: Gram and Wasserstein targets from disk, checked before use, keyed by the loss."""

import torch

from pipeline.core.losses import target_names
from pipeline.render.style_cache import StyleCache

CPU = torch.device("cpu")


def _w2_targets() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "relu1_1": torch.rand(4, 4, generator=g),
        "relu1_1.mean": torch.rand(4, generator=g),
        "relu1_1.sqrt": torch.rand(4, 4, generator=g),
    }


def test_wasserstein_targets_round_trip_through_the_disk(tmp_path):
    names = target_names(["relu1_1"], "wasserstein")
    assert sorted(names) == sorted(_w2_targets())
    calls = []

    def compute():
        calls.append(1)
        return _w2_targets()

    key = StyleCache.key(test="w2")
    StyleCache(tmp_path).get(key, names, CPU, compute)
    fresh = StyleCache(tmp_path)  # a new process: memory empty, the file on disk
    read = fresh.get(key, names, CPU, compute)
    assert calls == [1] and (fresh.hits, fresh.misses) == (1, 0)
    for name, tensor in _w2_targets().items():
        assert torch.equal(read[name], tensor)


def test_a_cached_entry_of_the_wrong_shape_or_names_is_recomputed(tmp_path):
    names = target_names(["relu1_1"], "wasserstein")
    key = StyleCache.key(test="w2")
    entry = tmp_path / "styles" / f"{key}.pt"
    StyleCache(tmp_path).get(key, names, CPU, _w2_targets)
    spoiled = [
        {**_w2_targets(), "relu1_1.mean": torch.rand(4, 1)},  # a mean that is not a vector
        {**_w2_targets(), "relu1_1.mean": torch.rand(3)},  # a mean of another layer's size
        {**_w2_targets(), "relu1_1.sqrt": torch.rand(4, 3)},
        {k: v for k, v in _w2_targets().items() if k != "relu1_1.sqrt"},  # a Gram target under a W2 key
        {**_w2_targets(), "relu1_1.mean": torch.full((4,), float("nan"))},
    ]
    for data in spoiled:
        torch.save(data, entry)
        cache = StyleCache(tmp_path)
        cache.get(key, names, CPU, _w2_targets)
        assert cache.misses == 1, data


def test_the_renderers_style_targets_are_keyed_by_the_style_loss(shared, tmp_path):
    from pipeline.core.optimize import Settings
    from pipeline.render.renderer import Renderer

    style = [(shared / "style" / "wave.jpg", 1.0)]
    layers = {"relu1_1": 1.0, "relu2_1": 1.0}
    shapes = [(32, 48)]
    for loss in ("gram", "wasserstein"):
        renderer = Renderer(
            Settings(size=48, scales=1, style_layers=layers, style_loss=loss), cache=StyleCache(tmp_path)
        )
        (targets,) = renderer.styles.targets(style, shapes)
        assert sorted(targets) == sorted(target_names(list(layers), loss))
        assert renderer.cache.misses == 1  # the gram entry on disk is not the wasserstein one
    assert len(list((tmp_path / "styles").glob("*.pt"))) == 2
    again = Renderer(
        Settings(size=48, scales=1, style_layers=layers, style_loss="wasserstein"), cache=StyleCache(tmp_path)
    )
    again.styles.targets(style, shapes)
    assert (again.cache.hits, again.cache.misses) == (1, 0)


def test_the_renderers_style_targets_at_a_style_scale_are_those_of_the_scaled_area(shared, tmp_path):
    from pipeline.core.optimize import Settings, style_targets
    from pipeline.media.images import read_image
    from pipeline.render.renderer import Renderer

    style = shared / "style" / "wave.jpg"
    renderer = Renderer(Settings(size=48, scales=1, style_layers={"relu1_1": 1.0}), cache=StyleCache(tmp_path))
    (plain,) = renderer.styles.targets([(style, 1.0)], [(32, 48)])
    (scaled,) = renderer.styles.targets([(style, 1.0)], [(32, 48)], style_scale=2.0)
    assert renderer.cache.misses == 2  # the area is in the cache key: another entry
    expected = style_targets(renderer.model, [(read_image(style), 1.0)], 64 * 96, ["relu1_1"])
    assert torch.allclose(scaled["relu1_1"], expected["relu1_1"], rtol=1e-5)
    assert not torch.allclose(scaled["relu1_1"], plain["relu1_1"], rtol=1e-2)


def test_the_memory_cache_keeps_only_the_most_recently_used_target_sets(tmp_path):
    from pipeline.render.style_cache import StyleCache

    cache = StyleCache(None)
    cache.MEMORY = 3
    made = []

    def targets(n):
        made.append(n)
        return {"relu1_1": torch.full((3, 3), float(n))}

    for n in (1, 2, 3, 1, 4):  # 1 is used again before 4 arrives: 2 is the one to go
        cache.get(str(n), ["relu1_1"], torch.device("cpu"), lambda n=n: targets(n))
    assert list(cache.memory) == ["3", "1", "4"] and made == [1, 2, 3, 4]
    cache.get("2", ["relu1_1"], torch.device("cpu"), lambda: targets(2))
    assert made == [1, 2, 3, 4, 2], "an evicted set is computed (or read from disk) again"
