"""Test-time adaptation: fine-tune a copy of the learned head on the support set of one request.

The support set is turned into pseudo-episodes (``support_pseudo_episodes``): every support example becomes a
query, segmented from its class's *other* supports (leave-one-out, K >= 2) or, with a single support, from
itself with the query side mirrored left-right (a feature-level flip: no image is re-encoded), keeping the
class text when there is one. The loss is BCE + dice against the support mask at encoder input size.
The same loss is the inner loop of first-order MAML in ``vlfss.training``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, ModelError
from . import functional as fn
from .head import SegHead
from .types import ClassSpec, Encoded

log = logging.getLogger(__name__)


def flip_encoded(e: Encoded) -> Encoded:
    """The features of the mirrored image, approximated by mirroring every feature map (and the RGB input)."""
    return Encoded(taps=[t.flip(-1) for t in e.taps], z=e.z.flip(-1), rgb=e.rgb.flip(-1), size=e.size)


def support_pseudo_episodes(specs: list[ClassSpec]) -> list[tuple[Encoded, Tensor, ClassSpec]]:
    """(query features, query mask H' x W' in {0,1,255}, class spec without that query) per support example."""
    out = []
    for spec in specs:
        k = len(spec.supports)
        for i, (enc, mask) in enumerate(spec.supports):
            if k >= 2:
                rest = [s for j, s in enumerate(spec.supports) if j != i]
                out.append((enc, mask, replace(spec, supports=rest)))
            else:
                out.append((flip_encoded(enc), mask.flip(-1), spec))
    return out


def support_priors(head: SegHead, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]] | None = None
                   ) -> list[Tensor | None]:
    """The head's training-free prior (1 x 1 x h x w) for each support pseudo-episode, or None where the head does
    not use one. The prior depends on the features and the head's recorded settings, not on its weights, so an
    adaptation loop computes it once and passes it to every step's ``support_loss``."""
    with torch.no_grad():
        return [head.prior(q, [spec], negatives or [])[None] if head.uses_prior([spec]) else None
                for q, _, spec in support_pseudo_episodes(specs)]


def support_loss(head: SegHead, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]] | None = None,
                 dice_weight: float = 1.0, priors: list[Tensor | None] | None = None) -> Tensor | None:
    """Mean BCE + dice of the head on the support pseudo-episodes; None when no class has supports.
    ``priors``: ``support_priors(head, specs, negatives)``, when the loss is taken more than once."""
    episodes = support_pseudo_episodes(specs)
    if not episodes:
        return None
    priors = priors if priors is not None else [None] * len(episodes)
    losses = []
    for (query, mask, spec), prior in zip(episodes, priors, strict=True):
        fg = head([query], [spec], negatives or [], prior)[:, 0]  # 1 x 4h x 4w
        fg = F.interpolate(fg.unsqueeze(1), size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        losses.append(fn.bce_dice_loss(fg, mask.unsqueeze(0).to(fg.device).long(), dice_weight))
    return torch.stack(losses).mean()


def adapt_head(head: SegHead | None, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]] | None,
               steps: int, lr: float = 1e-4, weight_decay: float = 0.0) -> SegHead:
    """A fine-tuned COPY of ``head`` after ``steps`` Adam steps on the support set; the original is left
    untouched. With no support examples there is nothing to adapt on: the copy is returned unchanged."""
    return adapt_checkpoints(head, specs, negatives, [steps], lr, weight_decay)[steps]


def adapt_checkpoints(head: SegHead | None, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]] | None,
                      steps: list[int], lr: float = 1e-4, weight_decay: float = 0.0) -> dict[int, SegHead]:
    """Copies of ``head`` after each step count in ``steps``, taken along ONE Adam run (one optimiser state), so
    the copy at 9 steps is exactly what ``adapt_head(..., steps=9)`` returns; the original is left untouched."""
    if head is None:
        raise ModelError("test-time adaptation needs a learned head; pass --head FILE or drop --adapt-steps")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise InputError(f"adapt steps must be a non-negative integer, got {s!r}")
    if not lr > 0:
        raise InputError(f"adaptation learning rate must be > 0, got {lr}")
    head = copy.deepcopy(head)
    for p in head.parameters():
        p.requires_grad_(True)
    want = sorted(set(steps))
    if want[-1] == 0 or not any(s.supports for s in specs):
        if want[-1]:
            log.info("no support examples: nothing to adapt on, using the head as is")
        head.eval()
        return dict.fromkeys(want, head)
    out: dict[int, SegHead] = {}
    if 0 in want:
        out[0] = _frozen_copy(head)
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    priors = support_priors(head, specs, negatives)  # the same for every step
    with torch.enable_grad():
        for step in range(1, want[-1] + 1):
            loss = support_loss(head, specs, negatives, priors=priors)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.debug("adapt step %d: support loss %.4f", step, loss.item())
            if step in want and step != want[-1]:
                out[step] = _frozen_copy(head)
    head.eval()
    out[want[-1]] = head
    return out


def _frozen_copy(head: SegHead) -> SegHead:
    c = copy.deepcopy(head)
    c.eval()
    return c
