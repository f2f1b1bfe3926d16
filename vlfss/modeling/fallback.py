"""Encoding with a robust fallback: the sharp tower first, and the robust tower for what the gate flags.

The sharp tower's taps are computed for every image anyway; the gate reads them, and only flagged images of the
batch are encoded a second time, by the robust tower; unflagged images keep the sharp tower's features exactly.
With a restorer, a flagged image is filtered first as its kind of degradation calls for: deblurred (Wiener, by
the sigma the restorer picks) when it looks blurred or resampled, which gives back much of the detail the robust
tower could not recover on its own, or smoothed where the restorer's response says so.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backbones.base import FrozenBackbone
from .dense import DenseFeatures
from .quality_gate import QualityGate, gate_features
from .restore import Restorer, wiener_deblur


def dense_with_fallback(backbone: FrozenBackbone, fallback: FrozenBackbone, gate: QualityGate, images: Tensor,
                        variant: str, restorer: Restorer | None = None) -> tuple[DenseFeatures, Tensor, Tensor]:
    """(features, B flags, B signed sigmas): ``backbone``'s features, with the rows the gate flags taken from
    ``fallback`` (filtered first as the restorer says: deblurred where sigma > 0, smoothed where < 0)."""
    feats = backbone.dense(images, variant)
    gf = gate_features(feats.taps)
    flags = (gate.score_features(gf) > gate.threshold).to(images.device)
    sigmas = torch.zeros(len(images))
    if not bool(flags.any()):
        return feats, flags.cpu(), sigmas
    x = images[flags]
    if restorer is not None:
        sig = restorer.sigma(gf[flags], x)
        if bool((sig != 0).any()):
            mean = torch.tensor(backbone.mean, device=x.device)
            std = torch.tensor(backbone.std, device=x.device)
            x = wiener_deblur(x, sig, restorer.k, -mean / std, (1 - mean) / std)  # sigma 0: left as it is
            sigmas[flags.cpu()] = sig.float()
    alt = fallback.dense(x, variant)

    def merge(a: Tensor, b: Tensor) -> Tensor:
        out = a.clone()
        out[flags] = b.to(a.dtype)
        return out

    merged = DenseFeatures(taps=[merge(a, b) for a, b in zip(feats.taps, alt.taps)], z=merge(feats.z, alt.z),
                           pooled=merge(feats.pooled, alt.pooled))
    return merged, flags.cpu(), sigmas
