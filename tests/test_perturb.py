"""Corruptions for the robustness suite: parsing with clear errors, and what each does to an image."""

from __future__ import annotations

import numpy as np
import pytest

from vlfss.data.perturb import apply_image, apply_label, parse_perturbation
from vlfss.errors import InputError

IMG = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)


@pytest.mark.parametrize("spec", ["jpeg:30", "blur:1", "noise:12", "scale:1.5", "scale:0.75", "gray"])
def test_specs_parse_and_keep_their_name(spec):
    assert parse_perturbation(spec).name == spec


@pytest.mark.parametrize("spec,needle", [("jpeg:0", "out of range"), ("jpeg:96", "out of range"),
                                         ("blur:-1", "out of range"), ("fog:2", "unknown corruption"),
                                         ("jpeg:x", "needs a number"), ("gray:2", "takes no value"),
                                         ("scale:0", "out of range")])
def test_bad_specs_name_the_argument_and_the_allowed_values(spec, needle):
    with pytest.raises(InputError, match=needle) as e:
        parse_perturbation(spec)
    assert spec in str(e.value) and "\n" not in str(e.value)


def test_scale_resizes_image_and_label_together():
    p = parse_perturbation("scale:1.5")
    label = np.zeros((40, 60), np.uint8)
    label[10:20, 10:30] = 1
    out, lab = apply_image(p, IMG), apply_label(p, label)
    assert out.shape == (60, 90, 3) and lab.shape == (60, 90)
    assert set(np.unique(lab)) == {0, 1}  # nearest: no new label values


def test_photometric_corruptions_keep_the_size_and_change_pixels():
    for spec in ("jpeg:30", "blur:1", "noise:12"):
        out = apply_image(parse_perturbation(spec), IMG)
        assert out.shape == IMG.shape and out.dtype == np.uint8 and not np.array_equal(out, IMG)
    grey = apply_image(parse_perturbation("gray"), IMG)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_noise_is_deterministic_per_seed():
    p = parse_perturbation("noise:12")
    assert np.array_equal(apply_image(p, IMG, seed=3), apply_image(p, IMG, seed=3))
    assert not np.array_equal(apply_image(p, IMG, seed=3), apply_image(p, IMG, seed=4))
