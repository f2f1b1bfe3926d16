"""Slide inference: window geometry, stitching, and the segmenter's slide path (one batch, cached, global)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlfss.data.synthetic import SyntheticConfig, generate_scene
from vlfss.errors import InputError
from vlfss.modeling import slide
from vlfss.segmenter import Segmenter, SegmenterConfig


@pytest.mark.parametrize("length,window,stride", [(96, 96, 64), (288, 96, 64), (100, 96, 60), (50, 96, 64),
                                                  (1000, 224, 112)])
def test_windows_cover_every_pixel_and_end_at_the_edge(length, window, stride):
    starts = slide.window_starts(length, window, stride)
    covered = np.zeros(max(length, window), bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered[:length].all()
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + window == max(length, window)  # the last window ends at the edge, never beyond
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_stitch_averages_overlapping_windows():
    grid = (3, 4)
    boxes = [(0, 0), (0, 2), (1, 0), (1, 2)]
    cells = torch.stack([torch.full((1, 2, 2), float(i)) for i in range(4)])
    out = slide.stitch(cells, boxes, grid)[0]
    # corner cells belong to one window; the middle row is shared by windows 0/2 and 1/3
    assert out[0, 0] == 0 and out[0, 3] == 1 and out[2, 0] == 2 and out[2, 3] == 3
    assert out[1, 0] == 1.0 and out[1, 3] == 2.0


def test_stitching_identical_windows_of_a_constant_map_is_that_map():
    boxes = slide.window_boxes(10, 10, 4, 3)
    cells = torch.ones(len(boxes), 5, 4, 4) * 7
    assert torch.equal(slide.stitch(cells, boxes, (10, 10)), torch.full((5, 10, 10), 7.0))


@pytest.fixture(scope="module")
def large_scene():
    return generate_scene(0, 3, SyntheticConfig(image_size=192, texture_scale=1.0))


def test_slide_encodes_all_windows_in_one_batch_and_caches_them(tiny_backbone, large_scene, monkeypatch):
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", inference="slide", slide_short_side=0))
    calls = []
    real = tiny_backbone.dense
    monkeypatch.setattr(tiny_backbone, "dense", lambda x, v="plain": calls.append(x.shape[0]) or real(x, v))
    window, stride = seg.window_geometry()
    enc = seg.encode([large_scene.image])[0]
    n = len(slide.window_boxes(192, 192, window, stride))
    assert calls == [n] and n > 1  # every window in one batched pass
    p = tiny_backbone.patch_size
    assert enc.z.shape[-2:] == (192 // p, 192 // p)  # one global grid for the whole image
    seg.encode([large_scene.image])
    assert calls == [n] and seg.image_encodes == 1  # the second request hits the cache


def test_real_clips_resize_the_short_side_before_sliding_as_sclip_does(tiny_backbone):
    """A real CLIP's default (SCLIP / ClearCLIP / ProxyCLIP): the short side to 1.5 windows, then windows, so a big
    photo is a handful of windows that each see a good part of it; 0 keeps native pixels; vlfss-tiny keeps them."""
    window = tiny_backbone.image_size
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain"))
    assert seg.cfg.slide_short_side == round(1.5 * window)  # resolved visibly in the config
    big = (20 * window, 15 * window)
    canvas, tag, boxes = seg._plan(*big, None)
    assert min(canvas) == round(1.5 * window) and len(boxes) <= 6 and tag.startswith("|slide")
    native = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", slide_short_side=0))
    assert len(native._plan(*big, None)[2]) > 100  # every native window of the photo
    assert Segmenter(tiny_backbone, SegmenterConfig(templates="plain", window=2 * window)).cfg.slide_short_side \
        == 3 * window  # in windows of the configured size
    with pytest.raises(InputError, match="slide_short_side=-1: use a side in pixels"):
        Segmenter(tiny_backbone, SegmenterConfig(templates="plain", slide_short_side=-1))


def test_the_embedded_model_slides_at_native_pixels():
    seg = Segmenter.from_config(SegmenterConfig(robust_fallback=False))
    assert seg.cfg.slide_short_side == 0  # its world is drawn at native pixels (the synthetic-large benchmark)
    canvas, _, boxes = seg._plan(288, 288, None)
    assert canvas == (288, 288) and len(boxes) == 16


def test_auto_slides_only_large_images(tiny_backbone, large_scene):
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain"))
    native = tiny_backbone.image_size
    assert seg.cfg.inference == "auto"
    assert seg.strategy(native, native) == "resize"
    assert seg.strategy(2 * native, native) == "slide"


def test_resize_and_slide_have_distinct_cache_entries(tiny_backbone, large_scene):
    a = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", inference="slide"))
    a.encode([large_scene.image])
    a.cfg.inference = "resize"
    enc = a.encode([large_scene.image])[0]
    assert a.image_encodes == 2 and enc.z.shape[-1] == tiny_backbone.image_size // tiny_backbone.patch_size


def test_slide_segments_at_the_original_size(tiny_backbone, large_scene):
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", inference="slide"))
    mask = (large_scene.mask == large_scene.mask.max()).astype(np.uint8)
    out = seg.segment(large_scene.image, supports=[(large_scene.image, mask)])
    assert out.labels.shape == large_scene.mask.shape


def test_a_small_image_still_slides_without_complaint(tiny_backbone):
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", inference="slide"))
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    out = seg.segment(img, supports=[(img, np.ones((20, 30), np.uint8))])
    assert out.labels.shape == (20, 30)


@pytest.mark.parametrize("window,stride,needle", [(0, None, "positive"), (96, 120, "larger than window"),
                                                  (100, 50, "multiples of the patch")])
def test_bad_window_or_stride_is_one_clear_error(tiny_backbone, window, stride, needle):
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", inference="slide", window=window or None,
                                                   stride=stride))
    if window == 0:
        seg.cfg.window = -6
    with pytest.raises(InputError, match=needle):
        seg.window_geometry()


def test_multiscale_averages_the_scales(tiny_backbone, large_scene):
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", inference="multiscale", scales=[1.0]))
    one = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", inference="resize"))
    mask = (large_scene.mask == large_scene.mask.max()).astype(np.uint8)
    a = seg.segment(large_scene.image, supports=[(large_scene.image, mask)])
    b = one.segment(large_scene.image, supports=[(large_scene.image, mask)])
    assert torch.allclose(a.logits, b.logits)  # one scale at 1.0 is the resize strategy


def test_slide_cost_script_counts_the_windows_and_times_both_arms():
    """eval/slide_cost.py (the issue's cost target): a 288-px image is 16 windows of 96 px at stride 66, and the
    ratio is slide time over windows x one native forward."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "eval" / "slide_cost.py"
    spec = importlib.util.spec_from_file_location("slide_cost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.measure("tiny", 1)
    assert (r["windows"], r["window"], r["stride"]) == (16, 96, 66)
    assert r["native_forward_ms"] > 0 and r["slide_ms"] > 0
    assert r["ratio_to_windows_x_forward"] == pytest.approx(r["slide_ms"] / (16 * r["native_forward_ms"]), rel=0.02)
