"""Per-row accumulation of an evaluation (``RowStats``) and the label / probability resizing it scores with.

``RowStats`` sums everything one result row needs over its episodes: the ``FSSMeter`` counts, calibration
bins, entropy sums on right and wrong pixels and one meter per rejection level of the risk-coverage curve.
All sums are integers (confidence and entropy in fixed point), so shards merged or all-reduced give exactly
the numbers of one process. ``patch_grid_oracle`` is the best any patch-level prediction can score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.distributed import all_reduce_sum, current_context
from ..errors import InputError
from .calibration import FIXED_POINT, calibration_counts, ece_from_counts, reject_masks, to_fixed
from .metrics import IGNORE, FSSMeter
from .options import DEFAULT_REJECT


def patch_grid_oracle(target: Tensor, grid: tuple[int, int], num_labels: int, ignore: int = IGNORE) -> Tensor:
    """The ground truth at patch-grid resolution: per cell the label with the largest area, upsampled back.

    ``target`` is H x W (labels 0..num_labels-1, ``ignore``); cells are the adaptive-average-pool windows of
    an h x w ``grid``; ignored pixels do not vote (an all-ignored cell is background); nearest upsampling.
    """
    h, w = target.shape
    valid = target != ignore
    lab = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
    onehot = F.one_hot(lab, num_labels).float() * valid[..., None]  # H x W x L
    area = F.interpolate(onehot.permute(2, 0, 1)[None], size=grid, mode="area")  # 1 x L x h x w
    cells = area.argmax(1, keepdim=True).float()  # 1 x 1 x h x w
    return F.interpolate(cells, size=(h, w), mode="nearest")[0, 0].long()


def resize_labels(target: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an H x W label map (the resized-label convention)."""
    if tuple(target.shape) == tuple(size):
        return target
    return F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].to(target.dtype)


def resize_probs(probs: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased when shrinking) resize of C x H x W probabilities."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    shrink = size[0] < probs.shape[-2] or size[1] < probs.shape[-1]
    return F.interpolate(probs[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


class RowStats:
    """Everything one result row sums over its episodes; integer counts, so shards add up exactly."""

    def __init__(self, num_classes: int, reject: Sequence[float] = DEFAULT_REJECT, ece_bins: int = 15) -> None:
        self.num_classes = num_classes
        self.reject = tuple(float(x) for x in reject)
        self.ece_bins = ece_bins
        self.meter = FSSMeter(num_classes)
        self.reject_meters = [FSSMeter(num_classes) for _ in self.reject]
        self.kept = torch.zeros(len(self.reject), dtype=torch.int64)  # valid pixels kept per rejection level
        self.valid = torch.zeros(1, dtype=torch.int64)  # valid pixels seen with a confidence map
        self.calib = torch.zeros(ece_bins, 3, dtype=torch.int64)
        self.entropy = torch.zeros(4, dtype=torch.int64)  # [sum ent correct, n correct, sum ent wrong, n wrong]
        self.has_uncertainty = False

    def update(self, pred: Tensor, target: Tensor, class_ids: Sequence[int], episode: int,
               confidence: Tensor | None = None, entropy: Tensor | None = None) -> None:
        """Add one episode: H x W ``pred`` (0..N) and ``target`` (0..N, 255); optional H x W confidence/entropy."""
        pred, target = pred.long().cpu(), target.long().cpu()
        self.meter.update(pred, target, class_ids, episode)
        if confidence is None:
            return
        self.has_uncertainty = True
        confidence = confidence.float().cpu()
        valid = target != IGNORE
        correct = pred == target
        self.valid += int(valid.sum())
        self.calib += calibration_counts(confidence[valid], correct[valid], self.ece_bins)
        if entropy is not None:
            ent = entropy.float().cpu()
            ok, bad = valid & correct, valid & ~correct
            self.entropy += torch.stack([to_fixed(ent[ok]).sum(), ok.sum(), to_fixed(ent[bad]).sum(), bad.sum()])
        for j, keep in enumerate(reject_masks(confidence, valid, self.reject)):
            self.kept[j] += int(keep.sum())
            self.reject_meters[j].update(pred, torch.where(keep, target, torch.full_like(target, IGNORE)),
                                         class_ids, episode)

    def _tensors(self) -> list[Tensor]:
        return [self.kept, self.valid, self.calib, self.entropy, torch.tensor([int(self.has_uncertainty)])]

    def merge(self, other: RowStats) -> RowStats:
        """Add another shard's sums into this one; returns self."""
        if (other.reject, other.ece_bins) != (self.reject, self.ece_bins):
            raise InputError("cannot merge row sums with other rejection levels or ECE bins")
        self.meter.merge(other.meter)
        for a, b in zip(self.reject_meters, other.reject_meters, strict=True):
            a.merge(b)
        for a, b in zip(self._tensors()[:4], other._tensors()[:4], strict=True):
            a += b
        self.has_uncertainty = self.has_uncertainty or other.has_uncertainty
        return self

    def all_reduce(self) -> RowStats:
        """Sums over all ``torch.distributed`` processes (a copy when not initialised); a collective."""
        out = RowStats(self.num_classes, self.reject, self.ece_bins)
        out.meter = self.meter.all_reduce()
        out.reject_meters = [m.all_reduce() for m in self.reject_meters]
        parts = self._tensors()
        flat = all_reduce_sum(torch.cat([p.reshape(-1) for p in parts]), current_context())
        chunks = torch.split(flat, [p.numel() for p in parts])
        out.kept, out.valid = chunks[0].clone(), chunks[1].clone()
        out.calib, out.entropy = chunks[2].reshape(self.ece_bins, 3).clone(), chunks[3].clone()
        out.has_uncertainty = bool(int(chunks[4][0]) > 0)
        return out

    def metrics(self, class_names: Sequence[str], classes: Sequence[int]) -> dict[str, Any]:
        """The row's numbers (fractions in [0, 1]; nan where undefined)."""
        m = self.meter
        summ = m.summary()
        ious, prec, rec, f1 = m.per_class_iou(), m.precision(), m.recall(), m.f1()
        present = [c for c in classes if c in ious]  # a class no episode drew is left out (as metrics does)
        per_class = {class_names[c]: {"iou": ious[c], "precision": prec[c], "recall": rec[c], "f1": f1[c]}
                     for c in present}

        def mean(d: dict[int, float]) -> float:
            return math.fsum(d[c] for c in present) / len(present) if present else float("nan")

        out: dict[str, Any] = {
            "miou": m.miou(present), "fb_iou": m.fb_iou(), "per_class": per_class, "classes_scored": len(present),
            "precision": mean(prec), "recall": mean(rec), "f1": mean(f1),
            "episode_miou": summ["episode_miou"], "episode_ci": summ["episode_ci"], "episodes": summ["episodes"],
            "ece": None, "calibration": None, "risk_coverage": None, "pixel_accuracy": None,
            "entropy_correct": None, "entropy_wrong": None,
        }
        if self.has_uncertainty:
            out.update(self._uncertainty(present))
        return out

    def _uncertainty(self, present: list[int]) -> dict[str, Any]:
        """ECE and its bins, pixel accuracy, mean entropy of right / wrong pixels, the risk-coverage curve."""
        valid = int(self.valid[0])
        cal = self.calib.tolist()
        e = self.entropy.tolist()
        return {
            "ece": ece_from_counts(self.calib),
            "calibration": {
                "bins": self.ece_bins, "count": [c[0] for c in cal],
                "confidence": [c[1] / FIXED_POINT / c[0] if c[0] else None for c in cal],
                "accuracy": [c[2] / c[0] if c[0] else None for c in cal]},
            "pixel_accuracy": int(self.calib[:, 2].sum()) / valid if valid else float("nan"),
            "entropy_correct": e[0] / FIXED_POINT / e[1] if e[1] else None,
            "entropy_wrong": e[2] / FIXED_POINT / e[3] if e[3] else None,
            "risk_coverage": [
                {"reject": frac, "coverage": int(self.kept[j]) / valid if valid else float("nan"),
                 "miou": self.reject_meters[j].miou(present)} for j, frac in enumerate(self.reject)],
        }
