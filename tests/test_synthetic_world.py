"""The synthetic world: deterministic, masks and captions agree, folds, class variation, tiny objects."""

from __future__ import annotations

import numpy as np

from vlfss.data.synthetic import _ADJECTIVES, CLASS_NAMES, NUM_CLASSES, SyntheticConfig, fold_classes, generate_scene


def _named(caption: str) -> set[int]:
    found = set()
    for c, name in enumerate(CLASS_NAMES):
        words = caption.replace(",", " ").split()
        if name in words or _ADJECTIVES[name] in words:
            found.add(c)
    return found


def test_same_seed_same_scene_any_order():
    a = [generate_scene(3, i) for i in range(5)]
    b = [generate_scene(3, i) for i in reversed(range(5))][::-1]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask) and x.caption == y.caption
    assert not np.array_equal(generate_scene(4, 0).image, a[0].image)


def test_every_class_in_caption_has_pixels_and_vice_versa():
    for i in range(150):
        s = generate_scene(0, i)
        present = {int(v) - 1 for v in np.unique(s.mask) if v > 0}
        assert present == set(s.class_ids)
        assert _named(s.caption) == present, (s.caption, present)
        for c in present:
            assert (s.mask == c + 1).sum() >= SyntheticConfig().min_visible


def test_folds_partition_the_classes():
    allc = sorted(c for f in range(4) for c in fold_classes(f))
    assert allc == list(range(NUM_CLASSES))
    assert fold_classes(2) == [10, 11, 12, 13, 14]


def test_colour_does_not_identify_the_class():
    """Mean object colour of one class varies across scenes about as much as across classes."""
    means = {c: [] for c in range(NUM_CLASSES)}
    for i in range(300):
        s = generate_scene(1, i)
        for c in s.class_ids:
            means[c].append(s.image[s.mask == c + 1].mean(0))
    within = np.mean([np.std(np.array(v), 0).mean() for v in means.values() if len(v) > 3])
    between = np.std(np.array([np.mean(v, 0) for v in means.values() if v]), 0).mean()
    assert within > 3 * between


def test_scene_statistics():
    cfg = SyntheticConfig()
    n_obj, multi, tiny = [], 0, 0
    for i in range(300):
        s = generate_scene(2, i, cfg)
        n_obj.append(len(s.class_ids))
        multi += len(s.class_ids) > 1
        areas = [(s.mask == c + 1).sum() for c in s.class_ids]
        tiny += min(areas) < 0.02 * s.mask.size
    assert 1 <= min(n_obj) and max(n_obj) <= 4
    assert multi > 100 and tiny > 5
    assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8


def test_class_restriction():
    for i in range(30):
        assert set(generate_scene(0, i, classes=[3, 7]).class_ids) <= {3, 7}
