"""Uncertainty maths on integer sums: calibration bins (ECE) and rejecting the least confident pixels.

Confidence sums are int64 in fixed point (units of 2^-20), so they are exact and do not depend on the order in
which shards add them up: a run split over processes gives the same ECE as one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import InputError

FIXED_POINT = 1 << 20  # confidence / entropy sums are int64 in units of 2^-20: exact and order-free


def to_fixed(x: Tensor) -> Tensor:
    """``x`` in fixed point (int64 units of 2^-20), rounded to nearest."""
    return torch.round(x.double() * FIXED_POINT).to(torch.int64)


def calibration_counts(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> Tensor:
    """n_bins x 3 int64 per equal-width bin (lo, hi]: [pixels, sum of confidence * 2^20, correct pixels].

    ``confidence`` and ``correct`` are same-shaped (only the pixels to count); confidence 0 falls in bin 0.
    """
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    conf = confidence.reshape(-1).double().clamp(0.0, 1.0)
    ok = correct.reshape(-1).to(torch.int64)
    idx = (torch.ceil(conf * n_bins).to(torch.int64) - 1).clamp(0, n_bins - 1)
    out = torch.zeros(n_bins, 3, dtype=torch.int64)
    out[:, 0].index_add_(0, idx, torch.ones_like(idx))
    out[:, 1].index_add_(0, idx, to_fixed(conf))
    out[:, 2].index_add_(0, idx, ok)
    return out


def ece_from_counts(counts: Tensor) -> float:
    """Expected calibration error sum_b n_b/N |acc_b - conf_b| from ``calibration_counts`` (nan if empty)."""
    n = int(counts[:, 0].sum())
    if n == 0:
        return float("nan")
    total = 0.0
    for cnt, conf_q, ok in counts.tolist():
        if cnt:
            total += abs(ok / cnt - conf_q / FIXED_POINT / cnt) * cnt / n
    return total


def expected_calibration_error(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """ECE of predictions with max-probability ``confidence`` and boolean ``correct`` (same shape)."""
    return ece_from_counts(calibration_counts(confidence, correct, n_bins))


def reject_least_confident(confidence: Tensor, valid: Tensor, fraction: float) -> Tensor:
    """Boolean keep-mask: ``valid`` minus its round(fraction * n_valid) least confident pixels (ties: first)."""
    return reject_masks(confidence, valid, [fraction])[0]


def reject_masks(confidence: Tensor, valid: Tensor, fractions: Sequence[float]) -> list[Tensor]:
    """``reject_least_confident`` for several fractions at once, from one stable sort of the valid pixels."""
    for fraction in fractions:
        if not 0.0 <= fraction <= 1.0:
            raise InputError(f"rejection fraction must be in [0, 1], got {fraction}")
    flat_idx = torch.nonzero(valid.reshape(-1)).flatten()
    n_valid = int(flat_idx.numel())
    order = None
    out = []
    for fraction in fractions:
        k = int(round(fraction * n_valid))
        if k == 0:
            out.append(valid.clone())
            continue
        if order is None:  # least confident first; stable, so ties reject the first pixel
            order = flat_idx[torch.sort(confidence.reshape(-1)[flat_idx], stable=True).indices]
        flat = valid.reshape(-1).clone()
        flat[order[:k]] = False
        out.append(flat.reshape(valid.shape))
    return out
