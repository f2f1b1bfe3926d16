"""PAMR: refined probabilities stay probabilities and move toward the image's edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlfss.modeling.refine import keep_areas, neighbours, pamr, refine_logits
from vlfss.segmenter import Segmenter, SegmenterConfig


def _reference_pamr(image, probs, iterations, dilations):
    """The original stacked implementation (B x C x P x H x W copies of every neighbour), kept as the oracle."""
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]

    def near(x):
        pad, (h, w) = max(dilations), x.shape[-2:]
        xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return torch.stack([xp[..., pad + dy * d: pad + dy * d + h, pad + dx * d: pad + dx * d + w]
                            for d in dilations for dy, dx in offsets], 2)

    n = near(image)
    std = torch.cat([n, image.unsqueeze(2)], 2).std(2, keepdim=True)
    aff = (-(image.unsqueeze(2) - n).abs() / (1e-8 + 0.1 * std)).mean(1, keepdim=True).softmax(2)
    out = probs
    for _ in range(iterations):
        out = (near(out) * aff).sum(2)
    return out


def _edge_case():
    """A two-colour image split at column 10 and a foreground probability that ramps softly across columns 5..15."""
    img = torch.zeros(1, 3, 12, 20)
    img[..., 10:] = 1.0
    ramp = torch.clamp((torch.arange(20.0) - 5) / 10, 0, 1).expand(12, 20)
    probs = torch.stack([1 - ramp, ramp]).unsqueeze(0)
    return img, probs


def test_pamr_keeps_probabilities_and_sharpens_toward_the_colour_edge():
    img, probs = _edge_case()
    out = pamr(img, probs, iterations=10, dilations=[1, 2])
    assert torch.allclose(out.sum(1), torch.ones(1, 12, 20), atol=1e-5)
    left, right = out[0, 1, :, 6:10].mean(), out[0, 1, :, 10:14].mean()
    before_left, before_right = probs[0, 1, :, 6:10].mean(), probs[0, 1, :, 10:14].mean()
    assert right - left > before_right - before_left  # the step across the edge grew
    assert left < before_left and right > before_right


@pytest.mark.parametrize("batch, size, classes, blocky", [
    (1, (17, 11), 1, False),  # non-square, smaller than the largest dilation (24)
    (1, (17, 11), 3, True),
    (2, (40, 56), 3, False),
    (1, (33, 30), 1, True),
])
def test_pamr_matches_the_stacked_reference(batch, size, classes, blocky):
    g = torch.Generator().manual_seed(sum(size) + classes)
    if blocky:  # flat patches of a few colours: zero local spread and exact ties between neighbours
        img = F.interpolate(torch.randint(0, 3, (batch, 3, 5, 4), generator=g) / 2.0, size=size, mode="nearest")
    else:
        img = torch.rand(batch, 3, *size, generator=g)
    probs = torch.randn(batch, classes, *size, generator=g).softmax(1)
    dilations = [1, 2, 4, 8, 12, 24]
    out = pamr(img, probs, iterations=10, dilations=dilations)
    assert out.shape == probs.shape
    assert torch.allclose(out, _reference_pamr(img, probs, 10, dilations), rtol=0, atol=1e-5)


def test_neighbours_at_a_dilation_are_shifted_copies():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    n = neighbours(x, [1])  # B x C x 8 x H x W
    assert n.shape == (1, 1, 8, 5, 5)
    assert n[0, 0, 4, 2, 2] == x[0, 0, 2, 3]  # offset (0, +1): the right neighbour


def test_refine_pamr_in_the_segmenter_keeps_the_output_size(tiny_backbone):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:50] = 1
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", refine="pamr", refine_iterations=3))
    out = seg.segment(img, supports=[(img, mask)])
    assert out.labels.shape == (50, 70)
    assert torch.allclose(out.probs.sum(0), torch.ones(50, 70), atol=1e-4)


def test_large_images_are_refined_at_a_capped_size():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.integers(0, 255, (40, 700, 3), dtype=np.uint8)).permute(2, 0, 1) / 255.0
    logits = torch.randn(2, 40, 700)
    out = refine_logits(img, logits, iterations=2, dilations=[1, 2, 4, 8, 12, 24], max_side=128)
    assert out.shape == (2, 40, 700)
    assert torch.allclose(out.exp().sum(0), torch.ones(40, 700), atol=1e-4)


def _underconfident_square(seed: int = 0):
    """A flat square on another colour, and 2-class logits whose foreground probability is about 0.46 on the
    square (noisy: ~40% of it above 0.5) and 0.1 around it: the demo scene's failure in miniature."""
    g = torch.Generator().manual_seed(seed)
    img = torch.zeros(3, 48, 48)
    img[0] = 0.8
    img[:, 12:36, 12:36] = torch.tensor([0.1, 0.6, 0.3]).view(3, 1, 1)
    inside = torch.zeros(48, 48, dtype=torch.bool)
    inside[12:36, 12:36] = True
    p = torch.where(inside, 0.46 + 0.15 * torch.randn(48, 48, generator=g), torch.full((48, 48), 0.1)).clamp(0.01, 0.99)
    return img, torch.stack([torch.log(1 - p), torch.log(p)]), inside


def test_keep_areas_keeps_the_count_and_follows_the_refined_ranking():
    img, logits, inside = _underconfident_square()
    refined = refine_logits(img, logits, iterations=10, dilations=[1, 2, 4, 8, 12, 24], max_side=512)
    before = int((logits.argmax(0) == 1).sum())
    assert int((refined.argmax(0) == 1).sum()) < 0.5 * before  # plain PAMR erodes the under-confident square
    kept = keep_areas(logits, refined)
    fg = kept.argmax(0) == 1
    assert int(fg.sum()) == before  # as many pixels as before refinement
    assert (fg & inside).sum() >= (logits.argmax(0).bool() & inside).sum()  # and more of them on the square
    assert torch.allclose(kept.exp().sum(0), torch.ones(48, 48), atol=1e-5)  # still probabilities


def test_keep_areas_with_three_classes_and_an_absent_class():
    g = torch.Generator().manual_seed(1)
    before = torch.randn(3, 30, 30, generator=g)
    before[2] -= 10  # class 2 wins nowhere
    after = torch.log_softmax(before + 0.8 * torch.randn(3, 30, 30, generator=g), 0)
    target = torch.bincount(before.argmax(0).flatten(), minlength=3)
    got = torch.bincount(keep_areas(before, after).argmax(0).flatten(), minlength=3)
    assert got[2] == 0 and (got - target).abs().max() <= 0.02 * 900


def test_pamr_area_in_the_segmenter(tiny_backbone):
    rng = np.random.default_rng(0)
    q = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    out = {r: Segmenter(tiny_backbone, SegmenterConfig(templates="plain", refine=r, mode="training-free")).segment(
        q, texts=["stripes"]) for r in ("none", "pamr-area")}
    assert out["pamr-area"].labels.shape == (40, 56)
    assert int(out["pamr-area"].labels.sum()) == int(out["none"].labels.sum())  # the unrefined area, moved


def test_refine_unset_takes_the_models_default(tiny_backbone, monkeypatch):
    """Refinement is on where it was measured (the embedded model), off elsewhere; an explicit value wins."""
    import dataclasses

    from vlfss.modeling.backbones import build_backbone

    assert Segmenter(tiny_backbone, SegmenterConfig(templates="plain")).cfg.refine == "none"  # a generic model
    monkeypatch.setattr(tiny_backbone, "defaults", dataclasses.replace(tiny_backbone.defaults, refine="pamr-area"))
    assert Segmenter(tiny_backbone, SegmenterConfig(templates="plain")).cfg.refine == "pamr-area"
    assert Segmenter(tiny_backbone, SegmenterConfig(templates="plain", refine="none")).cfg.refine == "none"
    assert build_backbone("vlfss-tiny").defaults.refine == "pamr-area"
    assert build_backbone("vlfss-tiny-robust").defaults.refine == "none"  # its tables were measured unrefined
