"""Encoding with a robust fallback: the sharp tower first; what the gate flags is encoded again, restored.

The sharp tower's taps are computed for every image anyway; the gate reads them. A flagged image is encoded a
second time: by the robust tower as it is, or, where the restorer predicts it closer to a clean image's features,
deblurred first and by the tower it names (the sharp one, when the deblur brings the detail back). Unflagged
images keep the sharp tower's features exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backbones.base import FrozenBackbone
from .dense import DenseFeatures
from .quality_gate import QualityGate, gate_features
from .restore import Restorer, wiener_deblur

SHARP, DEBLURRED, ROBUST = 0, 1, 2  # routes: which features an image got


def dense_with_fallback(backbone: FrozenBackbone, fallback: FrozenBackbone, gate: QualityGate, images: Tensor,
                        variant: str, restorer: Restorer | None = None) -> tuple[DenseFeatures, Tensor, Tensor]:
    """(features, B routes, B deblur sigmas): ``backbone``'s features, with the rows the gate flags replaced by
    the robust tower's (route ROBUST) or, for a deblurred image the restorer gives back to it, the sharp tower's
    (route DEBLURRED)."""
    feats = backbone.dense(images, variant)
    gf = gate_features(feats.taps)
    flagged = (gate.score_features(gf) > gate.threshold).to(images.device)
    routes = torch.zeros(len(images), dtype=torch.long)
    sigmas = torch.zeros(len(images))
    if not bool(flagged.any()):
        return feats, routes, sigmas
    rows = flagged.nonzero()[:, 0]
    x = images[rows]
    robust = torch.ones(len(rows), dtype=torch.bool)
    if restorer is not None:
        sig, robust = restorer.choose(gf[rows], x)
        deb = sig > 0
        if bool(deb.any()):
            mean = torch.tensor(backbone.mean, device=x.device)
            std = torch.tensor(backbone.std, device=x.device)
            x = x.clone()
            x[deb.to(x.device)] = wiener_deblur(x[deb.to(x.device)], sig[deb], restorer.k, -mean / std,
                                                (1 - mean) / std)
            sigmas[rows[deb.to(rows.device)].cpu()] = sig[deb].float()
    merged = feats
    if bool((~robust).any()):  # the sharp tower again, kept only where the gate passes the deblurred image
        p = (~robust).to(x.device)
        again = backbone.dense(x[p], variant)
        ok = ~(gate.score(again.taps) > gate.threshold).to(x.device)
        if bool(ok.any()):
            merged = _merge(merged, rows[p][ok], _rows(again, ok))
            routes[rows[p][ok].cpu()] = DEBLURRED
        back = p.clone()
        back[p] = ~ok
        robust = robust | back.cpu()
        x = torch.where(back.view(-1, 1, 1, 1), images[rows], x)  # still degraded: the robust tower, as it was
        sigmas[rows[back].cpu()] = 0.0
    if bool(robust.any()):
        p = robust.to(x.device)
        merged = _merge(merged, rows[p], fallback.dense(x[p], variant))
        routes[rows[p].cpu()] = ROBUST
    return merged, routes, sigmas


def _rows(f: DenseFeatures, keep: Tensor) -> DenseFeatures:
    return DenseFeatures(taps=[t[keep] for t in f.taps], z=f.z[keep], pooled=f.pooled[keep])


def _merge(base: DenseFeatures, rows: Tensor, new: DenseFeatures) -> DenseFeatures:
    """``base`` with ``rows`` replaced by ``new``'s (in order)."""
    def put(a: Tensor, b: Tensor) -> Tensor:
        out = a.clone()
        out[rows] = b.to(a.dtype)
        return out

    return DenseFeatures(taps=[put(a, b) for a, b in zip(base.taps, new.taps)], z=put(base.z, new.z),
                         pooled=put(base.pooled, new.pooled))
