"""Calibration on the supports: per-class offsets and the refinement from leave-one-out, applied to every query."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import blob_scene
from vlfss.errors import InputError
from vlfss.modeling.calibrate import HeldOut, best_offset, binary_iou, calibrate, choose_refine, split_supports
from vlfss.modeling.head_file import new_head
from vlfss.modeling.types import ClassSpec, Encoded
from vlfss.segmenter import Segmenter, SegmenterConfig


def _enc(value: float) -> Encoded:
    """A stand-in image: its one feature map carries the log-odds a scorer will read off it."""
    ramp = torch.linspace(-4, 4, 16)[None, :].expand(16, 16) + value
    return Encoded(taps=[ramp[None]], z=ramp[None], rgb=torch.zeros(3, 16, 16), size=(16, 16))


def _spec(name: str, k: int) -> ClassSpec:
    # the true foreground of every support is the right half: ramp > 0 when the scorer is calibrated
    mask = torch.zeros(16, 16, dtype=torch.long)
    mask[:, 8:] = 1
    return ClassSpec(name, None, [(_enc(0.0), mask) for _ in range(k)])


def _shifted_scorer(shifts: list[float]):
    """A scorer whose class c over-states its log-odds by shifts[c] (a head that is too eager on class c)."""
    def scorer_for(specs):
        return lambda q: torch.stack([q.z[0] + s for s in shifts[:len(specs)]])
    return scorer_for


def test_binary_iou_ignores_255_and_handles_an_empty_union():
    pred = torch.tensor([[True, False], [True, False]])
    assert binary_iou(pred, torch.tensor([[1, 0], [255, 255]])) == 1.0
    assert binary_iou(pred, torch.tensor([[0, 0], [0, 0]])) == 0.0
    assert binary_iou(~pred & ~pred.T, torch.tensor([[0, 0], [0, 255]])) == 1.0  # nothing predicted, nothing there


def test_best_offset_undoes_a_shift_and_prefers_no_shift_on_ties():
    mask = torch.zeros(1, 16, dtype=torch.long)
    mask[:, 8:] = 1
    ramp = torch.linspace(-3.75, 3.75, 16)[None]  # cells at +-0.25, +-0.75, ...; the cut lies between 7 and 8
    assert best_offset([(ramp + 1.0, mask)]) == pytest.approx(-1.0, abs=0.26)
    assert best_offset([(ramp - 1.0, mask)]) == pytest.approx(1.0, abs=0.26)
    assert best_offset([(ramp, mask)]) == 0.0  # several offsets tie at IoU 1: the one nearest 0 wins


def _offsets(scorer_for, specs, shrink=0.5):
    cal = calibrate(scorer_for, specs, lambda e: e.rgb, {}, "none", shrink)
    return None if cal is None else cal.offsets


def test_offsets_per_class_are_shrunk_and_need_two_supports():
    specs = [_spec("a", 3), _spec("b", 3)]
    off = _offsets(_shifted_scorer([2.0, -1.0]), specs, shrink=0.5)
    assert off.shape == (2,)
    # the ramp's cells are 0.53 apart, so the best offset is within a cell of the true shift, then halved
    assert off[0].item() == pytest.approx(-1.0, abs=0.3) and off[1].item() == pytest.approx(0.5, abs=0.3)
    full = _offsets(_shifted_scorer([2.0, -1.0]), specs, shrink=1.0)
    assert torch.allclose(off, 0.5 * full)
    assert _offsets(_shifted_scorer([2.0]), [_spec("a", 1)]) is None  # nothing to hold out
    assert _offsets(_shifted_scorer([2.0, 0.0]), [_spec("a", 3), _spec("b", 1)]) is None


def test_the_refinement_that_segments_held_out_supports_best_is_chosen():
    mask = torch.zeros(16, 16, dtype=torch.long)
    mask[:, 8:] = 1
    held = [HeldOut(0, _enc(0.0).z, mask, torch.zeros(3, 16, 16)) for _ in range(3)]
    keep = lambda img, lg: lg  # noqa: E731 - the unrefined answer: exactly the mask here
    erode = lambda img, lg: torch.cat([lg[:1], lg[1:] - 3.0])  # noqa: E731 - loses the mask's edge
    choice, scores = choose_refine(held, torch.zeros(1), {"erode": erode, "keep": keep}, "erode")
    assert choice == "keep" and scores["keep"] == 1.0 > scores["erode"]
    tie, _ = choose_refine(held, torch.zeros(1), {"a": keep, "b": keep}, "b")
    assert tie == "b"  # a tie keeps the configured refinement


def test_split_holds_out_one_support_of_every_class():
    specs = [_spec("a", 3), _spec("b", 2)]
    rest, held = split_supports(specs, 2)
    assert [len(s.supports) for s in rest] == [2, 1]  # class b has 2 supports: fold 2 holds out its first
    assert held[0] is specs[0].supports[2] and held[1] is specs[1].supports[0]
    assert [len(s.supports) for s in specs] == [3, 2]  # the request's own specs are untouched


@pytest.fixture()
def seg_pair(tiny_backbone):
    torch.manual_seed(0)
    head = new_head(tiny_backbone)
    base = dict(templates="plain", mode="learned", refine="none")  # none: not among calibrate_refine, so it stays
    return (Segmenter(tiny_backbone, SegmenterConfig(**base, calibrate="supports"), head),
            Segmenter(tiny_backbone, SegmenterConfig(**base, calibrate="none"), head))


def test_segmenter_shifts_each_class_by_its_offset_and_leaves_one_shot_alone(seg_pair, rng):
    cal, fixed = seg_pair
    q, _ = blob_scene(rng, 40, 56)
    two = [[blob_scene(rng, 40, 56) for _ in range(2)], [blob_scene(rng, 40, 56) for _ in range(2)]]
    req = cal.prepare(["x", "y"], two)
    assert req.offsets is not None and req.offsets.shape == (2,) and req.refine == "none"
    enc = cal.encode([q], req.variant)[0]
    plain = fixed.logits(enc, fixed.prepare(["x", "y"], two))
    assert torch.allclose(cal.logits(enc, req), plain + req.offsets[:, None, None], atol=1e-5)
    one = [[blob_scene(rng, 40, 56)], [blob_scene(rng, 40, 56)]]
    assert cal.prepare(["x", "y"], one).offsets is None
    a = cal.segment(q, texts=["x", "y"], supports=one).logits
    b = fixed.segment(q, texts=["x", "y"], supports=one).logits
    assert torch.allclose(a, b, atol=1e-4)  # as without calibration (up to the encoder's batch-size rounding)


def test_training_free_mode_is_calibrated_and_picks_a_refinement(tiny_backbone, rng, caplog):
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", mode="training-free", refine="pamr-area"))
    with caplog.at_level("INFO", logger="vlfss.segmenter"):
        req = seg.prepare(None, [[blob_scene(rng) for _ in range(3)]])
    assert req.offsets is not None and req.offsets.shape == (1,)
    assert req.refine in ("pamr", "pamr-area") and "held-out IoU" in caplog.text
    q, _ = blob_scene(rng)
    out = seg.predict([q], req)[0]
    enc = seg.encode([q], req.variant)[0]
    from vlfss.modeling import functional as fn
    want = seg.refine_logits(q, fn.nway_logits(seg.logits(enc, req).unsqueeze(0))[0], req.refine)
    assert torch.allclose(out.logits, want, atol=1e-5)  # the query is refined the way the supports chose
    assert seg.prepare(None, [[blob_scene(rng)]]).refine is None  # one support: the configured refinement


def test_bad_calibration_settings_are_refused_naming_the_setting(tiny_backbone):
    with pytest.raises(InputError, match="calibrate_shrink=1.5"):
        Segmenter(tiny_backbone, SegmenterConfig(templates="plain", calibrate_shrink=1.5))
    with pytest.raises(InputError, match="calibrate_refine=.*'crf' is not a refinement"):
        Segmenter(tiny_backbone, SegmenterConfig(templates="plain", calibrate_refine=["pamr", "crf"]))
