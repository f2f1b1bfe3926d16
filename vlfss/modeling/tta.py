"""Validated test-time adaptation: adapt the head on the supports only when held-out supports say it helps.

Plain adaptation (``adapt.adapt_head``, a fixed number of steps) cost accuracy at one shot, the common case
(docs/inference.md). Here the supports validate it first, as a user with a labelled validation set would:

* a class with one support cannot validate anything (its only pseudo-episode is itself, mirrored), so a request
  where any class has a single support is answered by the unadapted head;
* with K >= 2 supports per class, up to ``folds`` leave-one-out splits hold one support of every class out, adapt a
  copy of the head on the others, and score the held-out support (segmented from the others) after each step count
  in ``steps``; the step count with the best mean held-out IoU wins, 0 (no adaptation) included, and only a gain of
  more than ``margin`` adapts. The chosen count is then run on all the supports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapt import adapt_checkpoints, adapt_head
from .calibrate import split_supports
from .head import SegHead
from .types import ClassSpec, Encoded

log = logging.getLogger(__name__)


@dataclass
class TTAChoice:
    """What validation decided: the step count (0: declined) and the held-out IoU per candidate step count."""

    steps: int
    scores: dict[int, float]
    reason: str


def held_out_iou(head: SegHead, held: list[tuple[Encoded, Tensor, ClassSpec]],
                 negatives: list[tuple[Encoded, Tensor]]) -> float:
    """Mean binary IoU of the head on held-out supports (query features, mask in {0,1,255}, spec without it)."""
    ious = []
    with torch.no_grad():
        for query, mask, spec in held:
            prior = head.prior(query, [spec], negatives)[None] if head.uses_prior([spec]) else None
            fg = head([query], [spec], negatives, prior)[:, 0]
            fg = F.interpolate(fg.unsqueeze(1), size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
            pred, valid, target = fg[0, 0] > 0, mask != 255, mask == 1
            inter = (pred & target & valid).sum().item()
            union = ((pred | target) & valid).sum().item()
            ious.append(inter / union if union else 1.0)
    return sum(ious) / len(ious)


def _split(specs: list[ClassSpec], fold: int) -> tuple[list[ClassSpec], list[tuple[Encoded, Tensor, ClassSpec]]]:
    """Hold support ``fold`` (mod K) of every class out: (specs without it, held-out pseudo-queries)."""
    train, out = split_supports(specs, fold)
    return train, [(enc, mask, spec) for (enc, mask), spec in zip(out, train, strict=True)]


def choose_steps(head: SegHead, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
                 steps: list[int], lr: float, folds: int = 3, margin: float = 0.0) -> TTAChoice:
    """Pick the number of adaptation steps (0 = none) by leave-one-out validation on the supports."""
    if not specs or min(len(s.supports) for s in specs) < 2:
        return TTAChoice(0, {}, "a class has fewer than 2 supports: adaptation cannot be validated")
    candidates = sorted({int(s) for s in steps if s > 0})
    totals = dict.fromkeys([0, *candidates], 0.0)
    n = min(folds, min(len(s.supports) for s in specs))
    for f in range(n):
        train, held = _split(specs, f)
        totals[0] += held_out_iou(head, held, negatives)
        adapted = adapt_checkpoints(head, train, negatives, candidates, lr=lr)  # one run, copies at each count
        for s in candidates:
            totals[s] += held_out_iou(adapted[s], held, negatives)
    scores = {k: v / n for k, v in totals.items()}
    best = max(scores, key=lambda k: (scores[k], -k))
    if best == 0 or scores[best] - scores[0] <= margin:
        return TTAChoice(0, scores, "held-out supports did not improve")
    return TTAChoice(best, scores, f"held-out IoU {scores[0]:.3f} -> {scores[best]:.3f}")


def adapt_validated(head: SegHead, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
                    max_steps: int, lr: float = 1e-4, folds: int = 3) -> tuple[SegHead, TTAChoice]:
    """The head adapted with the validated step count (the head itself when validation declines)."""
    grid = sorted({max(1, max_steps // 3), max_steps})
    choice = choose_steps(head, specs, negatives, grid, lr, folds)
    log.info("test-time adaptation: %d steps (%s)", choice.steps, choice.reason)
    if choice.steps == 0:
        return head, choice
    return adapt_head(head, specs, negatives, steps=choice.steps, lr=lr), choice
