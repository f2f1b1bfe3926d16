"""Training-free scoring: per-class foreground log-odds from text and prototype similarities on dense features.

Pure functions shared by ``Segmenter`` (training-free mode) and ``SegHead`` (whose learned output is a residual
over these log-odds). Shapes: ``z`` is D x h x w (one query), text embeddings D, masks at encoder input size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from . import functional as fn
from .config import TrainingFreeConfig
from .types import ClassSpec, Encoded


def text_level(threshold: float | None, logit_bias: float | None, logit_scale: float) -> float | None:
    """The fixed background cosine for text, if there is one: the configured threshold, else a SigLIP model's
    ``-bias / scale`` (where its sigmoid is 1/2); None: the level comes from background prompts instead."""
    if threshold is not None:
        return threshold
    return -logit_bias / logit_scale if logit_bias is not None else None


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


def check_config(cfg: TrainingFreeConfig, num_taps: int, prefix: str) -> None:
    """Refuse settings that cannot score, naming the key (``prefix``: ``training_free.`` or ``head.prior.``).

    ``proto_features`` is ``z`` (or None, the model's default) or ``tap<i>`` with i < the backbone's number of
    taps; the metric is ``cosine`` or ``mahalanobis``, the covariance shrinkage lies in (0, 1], the scale and the
    temperature are positive, and there is at least one prototype of each kind.
    """
    name = cfg.proto_features
    if not (name in (None, "z") or (name.startswith("tap") and name[3:].isdigit() and int(name[3:]) < num_taps)):
        raise InputError(f"{prefix}proto_features={name!r}: use 'z' (text-aligned embeddings) or one of "
                         f"{', '.join(f'tap{i}' for i in range(num_taps))} (the backbone's multi-layer taps)")
    if cfg.metric not in ("cosine", "mahalanobis"):
        raise InputError(f"{prefix}metric={cfg.metric!r}: use 'cosine' (angle to each prototype) or 'mahalanobis' "
                         "(distance under the supports' shrunk covariance)")
    if not 0.0 < float(cfg.shrinkage) <= 1.0:
        raise InputError(f"{prefix}shrinkage={cfg.shrinkage!r}: use a value in (0, 1] (1: no covariance, Euclidean)")
    for key in ("mahalanobis_scale", "proto_temperature"):
        if not float(getattr(cfg, key)) > 0.0:
            raise InputError(f"{prefix}{key}={getattr(cfg, key)!r}: use a positive number (default "
                             f"{getattr(TrainingFreeConfig, key)})")
    for key in ("num_prototypes", "num_bg_prototypes"):
        if int(getattr(cfg, key)) < 1:
            raise InputError(f"{prefix}{key}={getattr(cfg, key)!r}: use 1 (the masked mean) or more (k-means)")


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


def proto_features(e: Encoded, name: str | None) -> Tensor:
    """The dense features prototypes are matched on, every cell L2-normalised (C x h x w): ``z`` (also for None)
    or tap ``i`` of the encoder. Normalised cells make a prototype (a masked mean) weigh each cell equally rather
    than by its norm; cosine matching of the query is unchanged by it."""
    f = e.z if name in (None, "z") else e.taps[int(name[3:])]
    return F.normalize(f, dim=0)


@dataclass
class SupportState:
    """What training-free scoring takes from the supports and negatives alone: computed once per request and
    reused for every query image (the covariance, its inverse, the prototypes and the text fits)."""

    precision: Tensor | None  # C x C shrunk inverse covariance (mahalanobis), None for cosine or without supports
    center: Tensor | None  # C, the mean support cell the discriminant scores are centred on
    bg_protos: Tensor | None  # M x C background prototypes of every support and the negatives' foregrounds
    fg_protos: list[Tensor | None]  # per class: its foreground prototype(s) P x C, None without supports
    text_fits: list[tuple[float, float] | None]  # per class: (a, c) of the support-calibrated text, if any


def background_prototypes(sup_feats: list[list[Tensor]], specs: list[ClassSpec], neg_feats: list[Tensor],
                          negatives: list[tuple[Encoded, Tensor]], k: int) -> Tensor | None:
    """M x C background evidence: every support's background (its masked mean, or ``k`` k-means centres of its
    background cells: a cluttered background is several things, not one mean) and every negative's foreground.
    ``sup_feats``: per class, per support C x h x w; ``neg_feats``: per negative C x h x w."""
    protos = []
    for spec, fs in zip(specs, sup_feats):
        for f, (_, m) in zip(fs, spec.supports):
            if k > 1:
                inverted = torch.where(m == fn.IGNORE, m, 1 - m)
                protos.append(fn.multi_prototypes(f.unsqueeze(0), inverted.unsqueeze(0), k))
            else:
                protos.append(fn.prototypes(f.unsqueeze(0), m.unsqueeze(0))[1])
    for f, (_, m) in zip(neg_feats, negatives):
        protos.append(fn.prototypes(f.unsqueeze(0), m.unsqueeze(0))[0])
    return torch.cat(protos) if protos else None


def foreground_prototypes(feats: list[Tensor], masks: list[Tensor], k: int) -> Tensor:
    """P x C foreground prototypes of one class from its K shots (each C x h x w, mask H x W): the mean of the
    shots' masked means, one class prototype (PANet), or with ``k`` > 1 k-means centres of all shots' cells."""
    f, m = torch.stack(feats), torch.stack(masks)
    if k > 1:
        return fn.multi_prototypes(f, m, k)
    return fn.prototypes(f, m)[0].mean(0, keepdim=True)


def support_state(specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
                  cfg: TrainingFreeConfig) -> SupportState:
    """The query-independent half of ``training_free_logits``."""
    sup_feats = [[proto_features(e, cfg.proto_features) for e, _ in spec.supports] for spec in specs]
    neg_feats = [proto_features(e, cfg.proto_features) for e, _ in negatives]
    precision = center = None
    if cfg.metric == "mahalanobis" and any(sup_feats):  # text alone needs no prototype metric
        precision, center = support_precision([f for fs in sup_feats for f in fs],
                                              [m for spec in specs for _, m in spec.supports],
                                              neg_feats, [m for _, m in negatives], cfg.shrinkage)
    bg_protos = background_prototypes(sup_feats, specs, neg_feats, negatives, cfg.num_bg_prototypes)
    fg_protos = [foreground_prototypes(fs, [m for _, m in spec.supports], cfg.num_prototypes) if spec.supports
                 else None for spec, fs in zip(specs, sup_feats)]
    text_fits = [fit_support_text(spec, cfg.calibration_l2)
                 if spec.text is not None and spec.supports and cfg.calibrate_text else None for spec in specs]
    return SupportState(precision, center, bg_protos, fg_protos, text_fits)


def class_logits(text_cos: Tensor | None, fg_map: Tensor | None, bg_map: Tensor | None,
                 fit: tuple[float, float] | None, cfg: TrainingFreeConfig, text_scale: float,
                 text_bg: Tensor | float, proto_temperature: float) -> Tensor:
    """One class's foreground log-odds h x w from its evidence maps (each h x w).

    ``text_cos``: the query's cosine to the class text (None without text); ``fg_map`` / ``bg_map``: similarity
    to the class's best foreground prototype / to the best background prototype (None without supports / without
    any background evidence). Text alone is ``(cos - text_bg) * text_scale``; prototypes give
    ``(fg - bg) / proto_temperature``; the two are averaged with ``cfg.text_weight`` / ``cfg.proto_weight``, except
    that text calibrated on the supports (``fit`` = (a, c)) adds its evidence ``a * cos + c`` instead.
    """
    terms, weights = [], []
    evidence = None
    if text_cos is not None:
        if fit is not None:
            evidence = fit[0] * text_cos + fit[1]
        else:
            terms.append((text_cos - text_bg) * text_scale)
            weights.append(cfg.text_weight)
    if fg_map is not None:
        bgm = bg_map if bg_map is not None else torch.zeros_like(fg_map)
        terms.append(fn.foreground_logit(fg_map, bgm, proto_temperature))
        weights.append(cfg.proto_weight)
    total = sum(w * t for w, t in zip(weights, terms)) / sum(weights)
    if evidence is not None:
        total = total + cfg.text_weight * evidence
    return total


def training_free_logits(query: Encoded, specs: list[ClassSpec], negatives: list[tuple[Encoded, Tensor]],
                         cfg: TrainingFreeConfig, text_scale: float, text_bg: Tensor | float,
                         state: SupportState | None = None) -> Tensor:
    """Per-class foreground log-odds N x h x w for one encoded query.

    Text: ``(cos(z, t) - text_bg) * text_scale`` (or, with supports and ``cfg.calibrate_text``, the evidence of
    ``fit_support_text`` added to the prototype term). Examples: ``(cos_fg - cos_bg) / T``, or with
    ``cfg.metric="mahalanobis"`` the difference of linear discriminant scores under ``support_precision`` times
    ``cfg.mahalanobis_scale``, on the (L2-normalised) features ``cfg.proto_features`` names, with background
    evidence from every class's support background and the negatives' foreground. The shots' foreground
    prototypes are averaged into one class prototype; background keeps every support's own prototype (max), since
    backgrounds differ from image to image. ``state``: ``support_state(specs, negatives, cfg)`` when the caller
    scores several queries against the same supports (computed here otherwise).
    """
    st = state if state is not None else support_state(specs, negatives, cfg)
    zq = query.z.unsqueeze(0)  # 1 x D x h x w: text side
    fq = proto_features(query, cfg.proto_features).unsqueeze(0)  # 1 x C x h x w: prototype side

    def best(protos: Tensor) -> Tensor:  # h x w: similarity of each query cell to its best-matching prototype
        if st.precision is None:
            return fn.cosine_map(fq, protos).max(1).values[0]
        return fn.discriminant_map(fq, protos, st.precision, st.center).max(1).values[0]

    # cosine: a similarity gap over T; mahalanobis: a log-likelihood ratio, tempered
    temperature = cfg.proto_temperature if st.precision is None else 1.0 / cfg.mahalanobis_scale
    bg_map = best(st.bg_protos) if st.bg_protos is not None else None
    out = []
    for spec, fg, fit in zip(specs, st.fg_protos, st.text_fits):
        text_cos = fn.cosine_map(zq, spec.text.unsqueeze(0))[0, 0] if spec.text is not None else None
        fg_map = best(fg) if fg is not None else None
        out.append(class_logits(text_cos, fg_map, bg_map, fit, cfg, text_scale, text_bg, temperature))
    return torch.stack(out)
