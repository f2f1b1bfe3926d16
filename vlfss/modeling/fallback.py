"""Encoding with a robust fallback: the sharp tower first, and the robust tower for what the gate flags.

The sharp tower's taps are computed for every image anyway; the gate reads them, and only flagged images of the
batch are encoded a second time, by the robust tower; unflagged images keep the sharp tower's features exactly.
With a restorer, a flagged image is filtered first as its kind of degradation calls for: deblurred (Wiener, by
the sigma the restorer picks) when it looks blurred or resampled, which gives back much of the detail the robust
tower could not recover on its own, or smoothed where the restorer's response says so. The robust tower's features
of a flagged image may be averaged over its turns and mirrors (``vlfss.modeling.symmetry``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backbones.base import FrozenBackbone
from .dense import DenseFeatures
from .quality_gate import QualityGate, gate_features
from .restore import Restorer, wiener_deblur
from .symmetry import dense_symmetric


def restore_flagged(gate: QualityGate, restorer: Restorer | None, gate_feats: Tensor, images: Tensor,
                    mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B flags, B signed sigmas, the flagged rows as the robust tower is to see them): the gate's decision on
    ``gate_feats`` (``gate_features`` of the sharp tower's taps) and the restorer's filter of the flagged rows of
    ``images`` (normalised by ``mean`` / ``std``, per channel): deblurred where sigma > 0, smoothed where < 0.
    The one home of that decision, for inference and for distilling the robust tower on what it is shown."""
    flags = (gate.score_features(gate_feats) > gate.threshold).to(images.device)
    sigmas = torch.zeros(len(images))
    x = images[flags]
    if restorer is not None and len(x):
        sig = restorer.sigma(gate_feats[flags], x)
        if bool((sig != 0).any()):
            mean, std = mean.to(x.device), std.to(x.device)
            x = wiener_deblur(x, sig, restorer.k, -mean / std, (1 - mean) / std)  # sigma 0: left as it is
            sigmas[flags.cpu()] = sig.float()
    return flags, sigmas, x


def dense_with_fallback(backbone: FrozenBackbone, fallback: FrozenBackbone, gate: QualityGate, images: Tensor,
                        variant: str, restorer: Restorer | None = None,
                        symmetry: str = "none") -> tuple[DenseFeatures, Tensor, Tensor]:
    """(features, B flags, B signed sigmas): ``backbone``'s features, with the rows the gate flags taken from
    ``fallback`` (filtered first as the restorer says: deblurred where sigma > 0, smoothed where < 0; and averaged
    over the grid's ``symmetry``, ``vlfss.modeling.symmetry``)."""
    feats = backbone.dense(images, variant)
    flags, sigmas, x = restore_flagged(gate, restorer, gate_features(feats.taps), images,
                                       torch.tensor(backbone.mean), torch.tensor(backbone.std))
    if not bool(flags.any()):
        return feats, flags.cpu(), sigmas
    alt = dense_symmetric(fallback, x, variant, symmetry)

    def merge(a: Tensor, b: Tensor) -> Tensor:
        out = a.clone()
        out[flags] = b.to(a.dtype)
        return out

    merged = DenseFeatures(taps=[merge(a, b) for a, b in zip(feats.taps, alt.taps)], z=merge(feats.z, alt.z),
                           pooled=merge(feats.pooled, alt.pooled))
    return merged, flags.cpu(), sigmas
