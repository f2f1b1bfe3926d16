"""Encoding with a robust fallback: the sharp tower first, and the robust tower for what the gate flags.

The sharp tower's taps are computed for every image anyway; the gate reads them, and only flagged images of the
batch are encoded a second time, by the robust tower. Unflagged images keep the sharp tower's features exactly.
"""

from __future__ import annotations

from torch import Tensor

from .backbones.base import FrozenBackbone
from .dense import DenseFeatures
from .quality_gate import QualityGate


def dense_with_fallback(backbone: FrozenBackbone, fallback: FrozenBackbone, gate: QualityGate, images: Tensor,
                        variant: str) -> tuple[DenseFeatures, Tensor]:
    """(features, B flags): ``backbone``'s features, with the rows the gate flags taken from ``fallback``."""
    feats = backbone.dense(images, variant)
    flags = gate.flag(feats.taps).to(images.device)
    if not bool(flags.any()):
        return feats, flags.cpu()
    alt = fallback.dense(images[flags], variant)

    def merge(a: Tensor, b: Tensor) -> Tensor:
        out = a.clone()
        out[flags] = b.to(a.dtype)
        return out

    merged = DenseFeatures(taps=[merge(a, b) for a, b in zip(feats.taps, alt.taps)], z=merge(feats.z, alt.z),
                           pooled=merge(feats.pooled, alt.pooled))
    return merged, flags.cpu()
