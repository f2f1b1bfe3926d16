"""Training-free scoring: per-class foreground log-odds from text and prototype similarities on dense features.

Pure functions shared by ``Segmenter`` (training-free mode) and ``SegHead`` (whose learned output is a residual
over these log-odds). Shapes: ``z`` is D x h x w (one query), text embeddings D, masks at encoder input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from . import functional as fn

if TYPE_CHECKING:  # only for annotations: model.py imports this module
    from .config import TrainingFreeConfig
    from .types import ClassSpec, Encoded


def text_background(z: Tensor, level: float | None, bg_text: Tensor | None, neg_text: Tensor | None) -> Tensor | float:
    """Background cosine level for text: a fixed level (e.g. SigLIP's -bias/scale), else the max cosine to
    background prompt embeddings (M x D); raised to the max cosine to negative texts where given. z: 1 x D x h x w."""
    out: Tensor | float
    if level is not None:
        out = level
    elif bg_text is not None and len(bg_text):
        out = fn.cosine_map(z, bg_text).max(1).values[0]
    else:
        out = 0.0
    if neg_text is not None and len(neg_text):
        neg = fn.cosine_map(z, neg_text).max(1).values[0]
        out = torch.maximum(torch.as_tensor(out, dtype=neg.dtype), neg)
    return out


def fit_support_text(spec: ClassSpec, l2: float) -> tuple[float, float] | None:
    """(a, c) such that ``a * cos(z, t) + c`` is the text evidence for a query, calibrated on the class's own
    supports.

    A 1-D logistic fit of the supports' cell labels on their text cosine gives ``a * cos + b``; ``c`` is ``b``
    minus the supports' prior log-odds, so the result is what the text adds to the prototype log-odds. Text the
    encoder does not align with the supports' masks gets ``a`` near 0 and adds nothing, instead of dragging the
    fused prediction with an uncalibrated threshold. None when the supports lack foreground or background.
    """
    text = spec.text.unsqueeze(0)  # type: ignore[union-attr]
    cos, fgw, bgw = [], [], []
    for e, m in spec.supports:
        cos.append(fn.cosine_map(e.z.unsqueeze(0), text)[0, 0])
        f, b = fn.mask_weights(m.unsqueeze(0), tuple(e.z.shape[-2:]))
        fgw.append(f[0])
        bgw.append(b[0])
    fg_sum = float(sum(f.sum() for f in fgw))
    bg_sum = float(sum(b.sum() for b in bgw))
    if fg_sum <= 0 or bg_sum <= 0:
        return None
    a, b = fn.fit_logistic_1d(torch.cat([c.flatten() for c in cos]), torch.cat([f.flatten() for f in fgw]),
                              torch.cat([g.flatten() for g in bgw]), l2=l2)
    return float(a), float(b - math.log(fg_sum / bg_sum))


def check_proto_features(name: str, num_taps: int) -> None:
    """``training_free.proto_features`` must be ``z`` or ``tap<i>`` with i < the backbone's number of taps."""
    if name == "z":
        return
    if name.startswith("tap") and name[3:].isdigit() and int(name[3:]) < num_taps:
        return
    raise InputError(f"training_free.proto_features={name!r}: use 'z' (text-aligned embeddings) or one of "
                     f"{', '.join(f'tap{i}' for i in range(num_taps))} (the backbone's multi-layer taps)")


def check_metric(metric: str, shrinkage: float, scale: float, prefix: str) -> None:
    """Prototype metric is ``cosine`` or ``mahalanobis``, the covariance shrinkage lies in (0, 1] and the
    log-odds scale is positive."""
    if metric not in ("cosine", "mahalanobis"):
        raise InputError(f"{prefix}metric={metric!r}: use 'cosine' (angle to each prototype) or 'mahalanobis' "
                         "(distance under the supports' shrunk covariance)")
    if not 0.0 < float(shrinkage) <= 1.0:
        raise InputError(f"{prefix}shrinkage={shrinkage!r}: use a value in (0, 1] (1: no covariance, Euclidean)")
    if not float(scale) > 0.0:
        raise InputError(f"{prefix}mahalanobis_scale={scale!r}: use a positive factor (default 0.1)")


def support_precision(sup_feats: list[Tensor], sup_masks: list[Tensor], neg_feats: list[Tensor],
                      neg_masks: list[Tensor], shrinkage: float) -> tuple[Tensor, Tensor]:
    """The shrunk inverse of the covariance the support cells share (C x C), for Mahalanobis prototypes, and
    the mean support cell (C) to centre the discriminant scores on.

    Groups are every support's foreground and background and every negative's foreground; the covariance is
    pooled about each group's own mean (LDA), so it describes how cells of one thing vary, which the metric then
    discounts: directions in which a texture's cells scatter weigh less than those that separate things.
    """
    scatter, mass, cells = 0.0, 0.0, []
    for f, m, parts in [*((f, m, (0, 1)) for f, m in zip(sup_feats, sup_masks)),
                        *((f, m, (0,)) for f, m in zip(neg_feats, neg_masks))]:
        w = torch.stack(fn.mask_weights(m.unsqueeze(0), tuple(f.shape[-2:])))[list(parts), 0].flatten(1)  # G x hw
        x = f.flatten(1).T  # hw x C
        scatter = scatter + fn.pooled_covariance(x, w) * w.sum()  # this image's groups' scatter
        mass = mass + w.sum()
        cells.append(x)
    cov = scatter / mass if float(mass) > 0 else torch.zeros(cells[0].shape[1], cells[0].shape[1])
    return fn.shrunk_precision(cov, shrinkage), torch.cat(cells).mean(0)


def check_shot_pooling(value: str, key: str) -> None:
    """Shot pooling is ``mean`` or ``max``; anything else is an error naming the config key."""
    if value not in ("mean", "max"):
        raise InputError(f"{key}={value!r}: use 'mean' (one class prototype) or 'max' (best-matching shot)")


def proto_features(e: Encoded, name: str | None, cell_norm: bool = False) -> Tensor:
    """The dense features prototypes are matched on: ``z`` (also for None) or tap ``i`` of the encoder (C x h x w).

    ``cell_norm`` L2-normalises every cell, so a prototype (a masked mean) weighs each cell equally rather than
    by its norm; cosine matching of the query is unchanged by it.
    """
    f = e.z if name in (None, "z") else e.taps[int(name[3:])]
    return F.normalize(f, dim=0) if cell_norm else f


@dataclass
class SupportState:
    """What training-free scoring takes from the supports and negatives alone: computed once per request and
    reused for every query image (the covariance, its inverse, the prototypes and the text fits)."""

    precision: Tensor | None  # C x C shrunk inverse covariance (mahalanobis), None for cosine or without supports
    center: Tensor | None  # C, the mean support cell the discriminant scores are centred on
    bg_protos: Tensor | None  # M x C background prototypes of every support and the negatives' foregrounds
    fg_protos: list[Tensor | None]  # per class: its foreground prototype(s), None without supports
    text_fits: list[tuple[float, float] | None]  # per class: (a, c) of the support-calibrated text, if any


def support_state(specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
                  cfg: TrainingFreeConfig) -> SupportState:
    """The query-independent half of ``training_free_logits``."""
    sup_feats = [[proto_features(e, cfg.proto_features, cfg.cell_norm) for e, _ in spec.supports] for spec in specs]
    neg_feats = [proto_features(e, cfg.proto_features, cfg.cell_norm) for e, _ in negatives]
    precision = center = None
    if cfg.metric == "mahalanobis" and any(sup_feats):  # text alone needs no prototype metric
        precision, center = support_precision([f for fs in sup_feats for f in fs],
                                              [m for spec in specs for _, m in spec.supports],
                                              neg_feats, [m for _, m in negatives], cfg.shrinkage)
    bg_protos = []
    for spec, fs in zip(specs, sup_feats):
        for f, (_, m) in zip(fs, spec.supports):
            if cfg.num_bg_prototypes > 1:  # k-means over the support's background cells: a cluttered background
                inverted = torch.where(m == fn.IGNORE, m, 1 - m)  # is several things, not one mean
                bg_protos.append(fn.multi_prototypes(f.unsqueeze(0), inverted.unsqueeze(0), cfg.num_bg_prototypes))
            else:
                bg_protos.append(fn.prototypes(f.unsqueeze(0), m.unsqueeze(0))[1])
    for f, (_, m) in zip(neg_feats, negatives):
        bg_protos.append(fn.prototypes(f.unsqueeze(0), m.unsqueeze(0))[0])
    fg_protos: list[Tensor | None] = []
    text_fits: list[tuple[float, float] | None] = []
    for spec, fs in zip(specs, sup_feats):
        fg = None
        if spec.supports:
            feats = torch.stack(fs)
            masks = torch.stack([m for _, m in spec.supports])
            if cfg.num_prototypes > 1:
                fg = fn.multi_prototypes(feats, masks, cfg.num_prototypes)
            else:
                fg = fn.prototypes(feats, masks)[0]
                if cfg.shot_pooling == "mean":  # one class prototype: the mean of the shots' (PANet)
                    fg = fg.mean(0, keepdim=True)
        fg_protos.append(fg)
        calibrate = spec.text is not None and spec.supports and cfg.calibrate_text
        text_fits.append(fit_support_text(spec, cfg.calibration_l2) if calibrate else None)
    return SupportState(precision, center, torch.cat(bg_protos) if bg_protos else None, fg_protos, text_fits)


def training_free_logits(query: Encoded, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
                         cfg: TrainingFreeConfig, text_scale: float, text_bg: Tensor | float,
                         state: SupportState | None = None) -> Tensor:
    """Per-class foreground log-odds N x h x w for one encoded query.

    Text: ``(cos(z, t) - text_bg) * text_scale`` (or, with supports and ``cfg.calibrate_text``, the evidence of
    ``fit_support_text`` added to the prototype term). Examples: ``(cos_fg - cos_bg) / T``, or with
    ``cfg.metric="mahalanobis"`` the difference of linear discriminant scores under ``support_precision`` times
    ``cfg.mahalanobis_scale``, on the features ``cfg.proto_features`` names (cells L2-normalised first with
    ``cfg.cell_norm``), with background evidence from every class's support background and the negatives'
    foreground. The shots' foreground prototypes are averaged (``cfg.shot_pooling="mean"``) or each query cell
    takes its best-matching shot (``"max"``); background keeps every support's own prototype (max), since
    backgrounds differ from image to image. ``state``: ``support_state(specs, negatives, cfg)`` when the caller
    scores several queries against the same supports (computed here otherwise).
    """
    st = state if state is not None else support_state(specs, negatives, cfg)
    zq = query.z.unsqueeze(0)  # 1 x D x h x w: text side
    fq = proto_features(query, cfg.proto_features, cfg.cell_norm).unsqueeze(0)  # 1 x C x h x w: prototype side

    def score(protos: Tensor) -> Tensor:  # 1 x M x h x w similarity of the query cells to prototypes
        if st.precision is None:
            return fn.cosine_map(fq, protos)
        return fn.discriminant_map(fq, protos, st.precision, st.center)

    bg_map = score(st.bg_protos).max(1).values[0] if st.bg_protos is not None else None
    out = []
    for spec, fg, fit in zip(specs, st.fg_protos, st.text_fits):
        terms, weights = [], []
        evidence = None
        if spec.text is not None:
            s = fn.cosine_map(zq, spec.text.unsqueeze(0))[0, 0]
            if fit is not None:
                evidence = fit[0] * s + fit[1]
            else:
                terms.append((s - text_bg) * text_scale)
                weights.append(cfg.text_weight)
        if fg is not None:
            fg_map = score(fg).max(1).values[0]
            bgm = bg_map if bg_map is not None else torch.zeros_like(fg_map)
            # cosine: a similarity gap over T; mahalanobis: a log-likelihood ratio, tempered
            t = cfg.proto_temperature if st.precision is None else 1.0 / cfg.mahalanobis_scale
            terms.append(fn.foreground_logit(fg_map, bgm, t))
            weights.append(cfg.proto_weight)
        total = sum(w * t for w, t in zip(weights, terms)) / sum(weights)
        if evidence is not None:
            total = total + cfg.text_weight * evidence
        out.append(total)
    return torch.stack(out)
