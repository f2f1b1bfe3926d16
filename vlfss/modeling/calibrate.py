"""Calibration on the supports of a request: per-class decision thresholds and the choice of mask refinement.

A head meta-trained on base classes decides "foreground" at log-odds 0, and on a novel class that cut is often a
little off: the mask comes out too fat or too thin. And which refinement suits a request depends on how confident
its masks are: plain PAMR sharpens confident masks but erodes under-confident ones, which ``pamr-area`` keeps
(docs/inference.md). With K >= 2 supports per class the request can measure both itself, as a user with a
labelled validation set would. Each leave-one-out split (up to ``folds``) holds one support of every class out and
segments it from the others. Then

* each class's offset is the one on ``GRID`` with the best mean held-out IoU of its log-odds (ties: the smaller
  shift), shrunk towards 0 by ``shrink`` because four or five held-out masks are a noisy estimate;
* with those offsets, the refinement among the candidates with the best mean held-out IoU is chosen (ties: the
  configured one).

With a single support nothing can be held out, so nothing changes: the fixed threshold and the configured
refinement. Measured on the synthetic benchmark (docs/inference.md "Calibration on the supports").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from . import functional as fn
from .config import REFINES
from .types import ClassSpec, Encoded

GRID: tuple[float, ...] = tuple(0.25 * i for i in range(-8, 9))  # log-odds offsets tried (thresholds 0.12..0.88)
ScorerFor = Callable[[list[ClassSpec]], Callable[[Encoded], Tensor]]  # specs -> (image -> N x H x W log-odds)
Refiner = Callable[[Tensor, Tensor], Tensor]  # (3 x H x W image in [0, 1], (N+1) x H x W logits) -> refined


def check_calibration(shrink: float, refines: Sequence[str]) -> None:
    """One line for a calibration setting out of range (SegmenterConfig.calibrate_shrink / calibrate_refine)."""
    if not 0 <= shrink <= 1:
        raise InputError(f"calibrate_shrink={shrink}: use a fraction in [0, 1] "
                         "(0 keeps the fixed threshold, 1 applies the supports' offset in full)")
    bad = [r for r in refines if r not in REFINES]
    if bad:
        raise InputError(f"calibrate_refine={list(refines)}: {bad[0]!r} is not a refinement; "
                         f"use any of {', '.join(REFINES)}")


@dataclass
class HeldOut:
    """One held-out support: its class, the request's log-odds on it (N x H' x W', at the mask's size, segmented
    without it), its mask (H' x W' in {0, 1, 255}) and its image (3 x H' x W' in [0, 1], for refinement)."""

    cls: int
    logits: Tensor
    mask: Tensor
    image: Tensor


@dataclass
class Calibration:
    """What the supports decided: per-class log-odds offsets, the refinement, and the held-out IoU per candidate
    refinement (with the offsets)."""

    offsets: Tensor
    refine: str
    scores: dict[str, float]


def split_supports(specs: Sequence[ClassSpec], fold: int) -> tuple[list[ClassSpec], list[tuple[Encoded, Tensor]]]:
    """Hold support ``fold`` (mod K) of every class out: (specs without it, each class's held-out (features,
    mask at encoder input size))."""
    rest, held = [], []
    for spec in specs:
        i = fold % len(spec.supports)
        rest.append(replace(spec, supports=[s for j, s in enumerate(spec.supports) if j != i]))
        held.append(spec.supports[i])
    return rest, held


def binary_iou(pred: Tensor, mask: Tensor) -> float:
    """IoU of a boolean prediction against a {0, 1, 255} mask of the same size (255 ignored; empty union: 1)."""
    valid, target = mask != 255, mask == 1
    union = ((pred | target) & valid).sum().item()
    return ((pred & target & valid).sum().item() / union) if union else 1.0


def best_offset(held: Sequence[tuple[Tensor, Tensor]], grid: Sequence[float] = GRID) -> float:
    """The offset on ``grid`` with the best mean IoU of ``logits + offset > 0`` over (logits, mask) pairs; ties go
    to the offset nearest 0."""
    scores = {b: sum(binary_iou(lg + b > 0, m) for lg, m in held) / len(held) for b in grid}
    return max(scores, key=lambda b: (scores[b], -abs(b)))


def held_out(scorer_for: ScorerFor, specs: Sequence[ClassSpec], to_image: Callable[[Encoded], Tensor],
             folds: int = 5) -> list[HeldOut] | None:
    """Every class's held-out supports over up to ``folds`` leave-one-out splits, or None when a class has fewer
    than 2 supports. ``scorer_for(specs)`` prepares a set of classes once and returns the function that segments
    one image with them; ``to_image`` gives a support's image at its mask's size."""
    if not specs or min(len(s.supports) for s in specs) < 2:
        return None
    out = []
    for f in range(min(folds, min(len(s.supports) for s in specs))):
        rest, held = split_supports(specs, f)
        score = scorer_for(rest)
        for c, (enc, mask) in enumerate(held):
            size = tuple(mask.shape[-2:])
            lg = F.interpolate(score(enc)[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            out.append(HeldOut(c, lg, mask.to(lg.device), to_image(enc)))
    return out


def choose_refine(held: Sequence[HeldOut], offsets: Tensor, refiners: Mapping[str, Refiner], default: str
                  ) -> tuple[str, dict[str, float]]:
    """The refinement whose N-way answer on the held-out supports (with ``offsets``) has the best mean IoU of
    each support's class; ties (and a single candidate) go to ``default``."""
    scores = {}
    for name, refine in refiners.items():
        ious = []
        for h in held:
            logits = fn.nway_logits((h.logits + offsets.to(h.logits)[:, None, None]).unsqueeze(0))[0]
            ious.append(binary_iou(refine(h.image, logits).argmax(0) == h.cls + 1, h.mask))
        scores[name] = sum(ious) / len(ious)
    return max(scores, key=lambda k: (scores[k], k == default)), scores


def calibrate(scorer_for: ScorerFor, specs: Sequence[ClassSpec], to_image: Callable[[Encoded], Tensor],
              refiners: Mapping[str, Refiner], default_refine: str, shrink: float = 0.5, folds: int = 5,
              grid: Sequence[float] = GRID) -> Calibration | None:
    """Offsets and refinement from leave-one-out on the supports, or None when a class has a single support."""
    held = held_out(scorer_for, specs, to_image, folds)
    if held is None:
        return None
    offsets = torch.tensor([shrink * best_offset([(h.logits[c], h.mask) for h in held if h.cls == c], grid)
                            for c in range(len(specs))])
    if len(refiners) < 2:
        return Calibration(offsets, default_refine, {})
    refine, scores = choose_refine(held, offsets, refiners, default_refine)
    return Calibration(offsets, refine, scores)
