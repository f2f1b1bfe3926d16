"""A prepared request calibrated on its own supports: the segmenter's side of ``modeling.calibrate``.

Builds what the pure leave-one-out maths needs from a ``Segmenter``: a scorer per split (the same scoring a query
gets), each held-out support's image back in [0, 1], and the candidate refinements, then stores the result on the
request (``Request.offsets``, ``Request.refine``). Support features come from the request, so nothing is encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .modeling import calibrate
from .modeling.types import ClassSpec, Encoded

log = logging.getLogger("vlfss.segmenter")  # reported with the segmenter's own messages


def calibrate_request(seg: Any, request: Any) -> None:
    """Set ``request.offsets`` and ``request.refine`` from leave-one-out on its supports (>= 2 per class)."""
    def scorer_for(rest: list[ClassSpec]) -> Callable[[Encoded], Tensor]:
        sub = seg.request_for(request.mode, request.variant, rest, request.negatives, request.neg_text, request.head)
        return lambda query: seg.logits(query, sub, robust_head=False)  # the head being calibrated

    def image01(e: Encoded) -> Tensor:  # the support as the encoder saw it, back in [0, 1] (its mask's size)
        mean, std = (torch.tensor(v).to(e.rgb)[:, None, None] for v in (seg.backbone.mean, seg.backbone.std))
        return (e.rgb * std + mean).clamp(0, 1)

    cfg = seg.cfg
    cands = cfg.calibrate_refine if cfg.refine in cfg.calibrate_refine else [cfg.refine]
    refiners = {m: (lambda img, lg, m=m: seg.refine_rgb01(img, lg, m)) for m in dict.fromkeys(cands)}
    cal = calibrate.calibrate(scorer_for, request.specs, image01, refiners, cfg.refine, cfg.calibrate_shrink)
    if cal is not None:
        request.offsets, request.refine = cal.offsets, cal.refine
        log.info("calibrated on the supports: offsets %s, refine %s (held-out IoU %s)",
                 [round(float(o), 3) for o in cal.offsets], cal.refine,
                 {k: round(v, 3) for k, v in cal.scores.items()})
