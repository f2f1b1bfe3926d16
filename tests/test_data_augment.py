"""Augmentations move image and mask together, pad with ignore, mix as documented, and are seeded."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import scene

from vlfss.data import augment as A
from vlfss.data.augment import (
    colour_jitter,
    cutmix,
    hflip,
    mixup,
    random_scale_crop,
    resize_image,
    resize_mask,
    soft_labels,
)
from vlfss.errors import InputError


def _pair(seed=0):
    return scene(np.random.default_rng(seed), [0, 2])


def test_hflip():
    img, lab = _pair()
    a, m = hflip(img, lab, np.random.default_rng(0), p=1.0)
    assert (a == img[:, ::-1]).all() and (m == lab[:, ::-1]).all()
    a, m = hflip(img, lab, np.random.default_rng(0), p=0.0)
    assert (a == img).all() and (m == lab).all() and a is not img


def test_resize():
    const = np.full((5, 7, 3), 77, np.uint8)
    assert (resize_image(const, (11, 3)) == 77).all()
    lab = np.array([[1, 2], [3, 4]], np.uint8)
    assert resize_mask(lab, (4, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_scale_crop_keeps_labels_and_pads_with_ignore():
    img, lab = _pair()
    for seed in range(5):
        a, m = random_scale_crop(img, lab, np.random.default_rng(seed), 20, scale=(0.5, 2.0))
        assert a.shape == (20, 20, 3) and m.shape == (20, 20)
        assert set(np.unique(m).tolist()) <= set(np.unique(lab).tolist()) | {255}
    small_img, small_lab = np.full((4, 4, 3), 9, np.uint8), np.ones((4, 4), np.uint8)
    a, m = random_scale_crop(small_img, small_lab, np.random.default_rng(0), (10, 12), scale=(1.0, 1.0))
    assert (m == 1).sum() == 16 and (m == 255).sum() == 120 - 16 and (a[m == 1] == 9).all() and (a[m == 255] == 0).all()
    a, m = random_scale_crop(img, lab, np.random.default_rng(0), img.shape[:2], scale=(1.0, 1.0))
    assert (a == img).all() and (m == lab).all()
    with pytest.raises(InputError, match="scale"):
        random_scale_crop(img, lab, np.random.default_rng(0), 8, scale=(2.0, 1.0))
    with pytest.raises(InputError, match="mask"):
        random_scale_crop(img, lab[:-1], np.random.default_rng(0), 8)


def test_colour_jitter():
    img, _ = _pair()
    assert (colour_jitter(img, np.random.default_rng(0), 0, 0, 0, 0) == img).all()
    a = colour_jitter(img, np.random.default_rng(1))
    b = colour_jitter(img, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.uint8 and (a == b).all() and not (a == img).all()
    gray = np.full((3, 3, 3), 128, np.uint8)  # hue and saturation leave gray gray
    out = colour_jitter(gray, np.random.default_rng(2), brightness=0, contrast=0, saturation=0.5, hue=0.5)
    assert np.abs(out.astype(int) - 128).max() <= 1


def test_cutmix_lam_is_the_fraction_kept():
    img_a, lab_a = np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8)
    img_b, lab_b = np.full((20, 30, 3), 255, np.uint8), np.full((20, 30), 3, np.uint8)
    for seed in range(5):
        img, lab, lam = cutmix(img_a, lab_a, img_b, lab_b, np.random.default_rng(seed))
        from_b = (lab == 3)
        assert np.isclose(1 - from_b.mean(), lam) and ((img[..., 0] == 255) == from_b).all()
    with pytest.raises(InputError, match="equal sizes"):
        cutmix(img_a, lab_a, img_b[:5], lab_b[:5], np.random.default_rng(0))


def test_mixup_dominant_and_soft_labels():
    img_a, lab_a = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8)
    img_b, lab_b = np.full((4, 4, 3), 200, np.uint8), np.full((4, 4), 2, np.uint8)
    lab_a[0, 0] = 255
    lab_b[0, :2] = 255
    out = mixup(img_a, lab_a, img_b, lab_b, np.random.default_rng(0))
    assert np.abs(out.image.astype(float) - (1 - out.lam) * 200).max() <= 0.5 + 1e-6
    assert (out.mask == (lab_a if out.lam >= 0.5 else lab_b)).all()
    w = soft_labels(out.mask_a, out.mask_b, out.lam, 3)
    assert w.shape == (3, 4, 4)
    assert (w[:, 0, 0] == 0).all()  # ignored in both: no weight
    assert np.allclose(w[:, 0, 1], [1, 0, 0])  # b ignored: all weight on a's label
    assert np.allclose(w[:, 2, 2], [out.lam, 0, 1 - out.lam])
    assert np.allclose(w.sum(0)[1:], 1)
    with pytest.raises(InputError, match="num_labels"):
        soft_labels(lab_a, lab_b, 0.5, 2)


def test_degrade_draws_nothing_when_off_and_corrupts_when_on():
    img = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rng = np.random.default_rng(5)
    out = A.degrade(img, rng)  # every chance 0: the image, and the rng untouched (old recipes keep their views)
    assert out is img and rng.random() == np.random.default_rng(5).random()
    for kw in ({"blur": 1.0}, {"jpeg": 1.0, "jpeg_quality": 10}, {"resample": 1.0, "resample_min": 0.3}):
        a = A.degrade(img, np.random.default_rng(2), **kw)
        b = A.degrade(img, np.random.default_rng(2), **kw)
        assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)  # deterministic per rng
        # every corruption removes detail: less high-frequency energy than the original
        assert np.abs(np.diff(a.astype(int), axis=1)).mean() < np.abs(np.diff(img.astype(int), axis=1)).mean()
    with pytest.raises(InputError, match="blur must be in"):
        A.degrade(img, rng, blur=2.0)
