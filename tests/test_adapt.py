"""Test-time adaptation: a fine-tuned copy of the head; the segmenter's head never changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import blob_scene
from vlfss.errors import InputError, ModelError
from vlfss.modeling.adapt import adapt_head, flip_encoded, support_loss, support_pseudo_episodes
from vlfss.modeling.head_file import new_head
from vlfss.segmenter import Segmenter, SegmenterConfig


@pytest.fixture()
def seg(tiny_backbone):
    torch.manual_seed(0)
    head = new_head(tiny_backbone)
    # the head's own output: PAMR's propagation would blur the small differences these tests look for
    return Segmenter(tiny_backbone, SegmenterConfig(templates="plain", mode="learned", refine="none"), head)


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_adapt_head_changes_a_copy_and_lowers_the_support_loss(seg, rng):
    pairs = [blob_scene(rng, 40, 40) for _ in range(3)]
    specs = seg.build_specs(["a thing"], [pairs], seg.head_variant)
    before = _state(seg.head)
    with torch.no_grad():
        loss0 = float(support_loss(seg.head, specs))
    adapted = adapt_head(seg.head, specs, [], steps=8, lr=3e-3)
    assert adapted is not seg.head
    after = _state(seg.head)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched
    assert any(not torch.equal(before[k], v) for k, v in adapted.state_dict().items())  # the copy moved
    with torch.no_grad():
        loss1 = float(support_loss(adapted, specs))
    assert loss1 < loss0
    assert not adapted.training


def test_segment_with_adapt_steps_leaves_the_head_alone(seg, rng):
    q, _ = blob_scene(rng, 40, 56)
    pair = blob_scene(rng, 40, 56)
    before = _state(seg.head)
    plain = seg.segment(q, texts=["x"], supports=[pair])
    adapted = seg.segment(q, texts=["x"], supports=[pair], adapt_steps=3)
    assert all(torch.equal(before[k], v) for k, v in seg.head.state_dict().items())
    assert adapted.labels.shape == plain.labels.shape == (40, 56)
    assert not torch.allclose(adapted.logits, plain.logits)


def test_pseudo_episodes_leave_one_out_or_flip(seg, rng):
    one = seg.build_specs(None, [[blob_scene(rng)]], seg.head_variant)
    eps = support_pseudo_episodes(one)
    assert len(eps) == 1
    q, mask, spec = eps[0]
    enc, m = one[0].supports[0]
    assert torch.equal(q.z, enc.z.flip(-1)) and torch.equal(mask, m.flip(-1)) and spec.supports == one[0].supports
    three = seg.build_specs(["t"], [[blob_scene(rng) for _ in range(3)]], seg.head_variant)
    eps = support_pseudo_episodes(three)
    assert len(eps) == 3 and all(len(s.supports) == 2 for _, _, s in eps)
    for i, (q, _, s) in enumerate(eps):
        assert q is three[0].supports[i][0] and all(e is not q for e, _ in s.supports)  # never its own support
    assert torch.equal(flip_encoded(flip_encoded(enc)).z, enc.z)


def test_nothing_to_adapt_on_and_errors(seg, rng):
    specs = seg.build_specs(["only text"], None, seg.head_variant)
    assert support_loss(seg.head, specs) is None
    copy = adapt_head(seg.head, specs, [], steps=5)
    assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), seg.head.state_dict().values(),
                                                 strict=True))
    with pytest.raises(ModelError, match="learned head"):
        adapt_head(None, specs, [], steps=1)
    with pytest.raises(InputError, match="non-negative"):
        adapt_head(seg.head, specs, [], steps=-1)
    with pytest.raises(InputError, match="learning rate"):
        adapt_head(seg.head, specs, [], steps=1, lr=0.0)
    with torch.no_grad():
        assert np.isfinite(float(support_loss(seg.head, seg.build_specs(None, [[blob_scene(rng)]], seg.head_variant))))


def test_adaptation_computes_each_pseudo_episode_prior_once(seg, rng):
    """The prior depends on features, not on the weights being adapted: 6 steps on 3 pseudo-episodes compute
    3 priors, and the loss with them equals the loss computing them afresh."""
    from vlfss.modeling.adapt import support_priors

    specs = seg.build_specs(["a thing"], [[blob_scene(rng, 40, 40) for _ in range(3)]], seg.head_variant)
    calls = []
    real = seg.head.prior
    seg.head.prior = lambda *a: calls.append(1) or real(*a)  # type: ignore[method-assign]
    adapt_head(seg.head, specs, [], steps=6, lr=3e-3)  # the copy keeps the patched bound method's counter
    seg.head.prior = real  # type: ignore[method-assign]
    assert len(calls) == 3
    with torch.no_grad():
        priors = support_priors(seg.head, specs)
        assert torch.allclose(support_loss(seg.head, specs, priors=priors), support_loss(seg.head, specs))


def _pairs(rng, n):
    out = []
    for _ in range(n):
        img = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        mask[8:30, 10:40] = 1
        out.append((img, mask))
    return out


def test_validated_adaptation_declines_with_one_support(seg, rng):
    from vlfss.modeling.tta import choose_steps

    specs = seg.build_specs(["x"], [_pairs(rng, 1)], seg.head_variant)
    choice = choose_steps(seg.head, specs, [], [2, 4], lr=1e-3)
    assert choice.steps == 0 and "fewer than 2 supports" in choice.reason
    # and a 1-shot request with adapt_steps answers exactly as without adaptation
    q = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    pair = _pairs(rng, 1)
    a = seg.segment(q, texts=["x"], supports=pair, adapt_steps=4)
    b = seg.segment(q, texts=["x"], supports=pair)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)  # the unadapted head (equal up to float noise)


def test_validated_adaptation_scores_every_candidate_on_held_out_supports(seg, rng):
    from vlfss.modeling.tta import choose_steps

    specs = seg.build_specs(["x"], [_pairs(rng, 3)], seg.head_variant)
    choice = choose_steps(seg.head, specs, [], [1, 3], lr=1e-3, folds=2)
    assert set(choice.scores) == {0, 1, 3}
    assert all(0.0 <= v <= 1.0 for v in choice.scores.values())
    best = max(choice.scores.values())
    assert choice.steps == 0 or choice.scores[choice.steps] == best  # only the best count can be chosen


def test_validation_scores_the_heads_that_would_be_applied(seg, rng):
    """The checkpoints validation scores come from one Adam run, so the head at k steps is exactly what
    ``adapt_head(steps=k)`` applies afterwards (a fresh optimiser per checkpoint would score other weights)."""
    from vlfss.modeling.adapt import adapt_checkpoints, adapt_head

    specs = seg.build_specs(["x"], [_pairs(rng, 2)], seg.head_variant)
    before = [p.detach().clone() for p in seg.head.parameters()]
    marks = adapt_checkpoints(seg.head, specs, [], [0, 2, 5], lr=1e-3)
    for k in (0, 2, 5):
        direct = adapt_head(seg.head, specs, [], steps=k, lr=1e-3)
        for a, b in zip(marks[k].parameters(), direct.parameters()):
            assert torch.equal(a, b), k
    assert not all(torch.equal(a, b) for a, b in zip(marks[2].parameters(), marks[5].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, seg.head.parameters()))  # the original is untouched
