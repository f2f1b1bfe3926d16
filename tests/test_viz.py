"""Pictures of results: palette label PNGs keep the labels, side-by-side panels keep every pixel, titles sit over
their own panel."""

from __future__ import annotations

import numpy as np
import pytest

from vlfss.viz import label_png, side_by_side


def _panels(rng, sizes):
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_side_by_side_places_every_panel_unchanged(rng):
    panels = _panels(rng, [(20, 30), (25, 10), (12, 16)])
    out = side_by_side(panels, gap=3)
    assert out.shape == (25, 30 + 3 + 10 + 3 + 16, 3)
    x = 0
    for p in panels:
        assert np.array_equal(out[: p.shape[0], x: x + p.shape[1]], p)
        assert (out[p.shape[0]:, x: x + p.shape[1]] == 255).all()  # shorter panels are padded with white
        x += p.shape[1] + 3


def test_titles_are_drawn_over_their_own_panel_and_leave_the_panels_untouched(rng):
    panels = _panels(rng, [(40, 120), (30, 140), (40, 150)])
    titles = ["query", "ground truth", "confidence"]
    plain = side_by_side(panels, gap=4)
    titled = side_by_side(panels, gap=4, titles=titles)
    band = titled.shape[0] - plain.shape[0]
    assert band > 0 and titled.shape[1] == plain.shape[1]
    assert np.array_equal(titled[band:], plain)  # the title band is added above; no panel pixel changes
    ink = titled[:band].min(axis=2) < 128  # dark text on white
    x = 0
    for p in panels:
        cols = np.nonzero(ink[:, x: x + p.shape[1]].any(axis=0))[0]
        assert cols.size, "a panel has no title"
        centre = (cols.min() + cols.max()) / 2
        assert abs(centre - p.shape[1] / 2) <= 2, (centre, p.shape[1])  # centred over its panel
        x += p.shape[1]
        if x < ink.shape[1]:
            assert not ink[:, x: x + 4].any()  # nothing drawn over the gap between panels
        x += 4


def test_titles_must_match_the_panels(rng):
    with pytest.raises(ValueError, match="2 titles for 3 panels"):
        side_by_side(_panels(rng, [(8, 8)] * 3), titles=["a", "b"])


def test_label_png_pixel_values_are_the_labels(tmp_path):
    labels = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    path = tmp_path / "labels.png"
    label_png(labels).save(path)
    from PIL import Image

    img = Image.open(path)
    assert img.mode == "P"
    assert np.array_equal(np.asarray(img), labels)
    pal = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)
    assert tuple(pal[0]) == (0, 0, 0) and tuple(pal[1]) == (128, 0, 0)  # the PASCAL VOC colour map
