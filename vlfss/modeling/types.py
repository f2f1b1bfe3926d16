"""The types every part shares: encoded features, a class of a request, and the segmentation output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import functional as fn
from .config import INPUT_KINDS  # noqa: F401 - re-exported: the kinds input_kind returns


# ------------------------------------------------------------------------------------------- output
@dataclass
class SegmentationOutput:
    """Per-image result at the image's original size."""

    class_names: list[str]  # N names; label i+1 is class_names[i], 0 is background
    logits: Tensor  # (N+1) x H x W
    probs: Tensor  # (N+1) x H x W, softmax over background + classes
    labels: Tensor  # H x W long, argmax of probs
    masks: Tensor  # N x H x W bool, labels == i+1
    confidence: Tensor  # H x W, max probability
    entropy: Tensor  # H x W, normalised entropy (0 certain, 1 uniform)
    robust_tower: float | None = None  # share of the image's encoder inputs (1, or its slide windows) the quality
    # gate found degraded and sent to the model's robust tower; None: the model has no robust tower
    restored: float | None = None  # share of its encoder inputs the restorer filtered first (deblurred, or
    # smoothed where its response for that kind says so) before the robust tower encoded them
    # (SegmenterConfig.deblur); None: the model has no robust tower
    inference: str | None = None  # how the image was encoded: resize, slide or multiscale (auto records its pick)
    windows: int = 0  # slide: the encoder windows the image was cut into

    def summary(self) -> dict[str, Any]:
        """Classes, areas (pixels and fraction) and mean confidence, for JSON."""
        total = int(self.labels.numel())
        classes = []
        for i, name in enumerate(self.class_names):
            m = self.masks[i]
            area = int(m.sum())
            classes.append({"label": i + 1, "name": name, "area_px": area, "area_frac": round(area / total, 5),
                            "mean_confidence": round(float(self.confidence[m].mean()) if area else 0.0, 4)})
        out = {"height": int(self.labels.shape[0]), "width": int(self.labels.shape[1]), "classes": classes,
               "mean_confidence": round(float(self.confidence.mean()), 4),
               "mean_entropy": round(float(self.entropy.mean()), 4)}
        if self.inference is not None:
            out["inference"] = self.inference
        if self.windows:
            out["windows"] = self.windows
        if self.robust_tower is not None:
            out["robust_tower"] = round(self.robust_tower, 4)
        if self.restored is not None:
            out["restored"] = round(self.restored, 4)
        return out


def make_output(logits: Tensor, class_names: list[str], robust_tower: float | None = None,
                restored: float | None = None, inference: str | None = None, windows: int = 0) -> SegmentationOutput:
    """(N+1) x H x W logits -> SegmentationOutput."""
    probs = logits.float().softmax(0)
    # max over dim 0 gives the argmax (the first maximum, as argmax) and the confidence in one pass; argmax(0) alone
    # took 20x longer on a small N+1 (2 ms on 2 x 96 x 96, most of `vlfss label`'s writing time)
    confidence, labels = probs.max(0)
    n = len(class_names)
    masks = torch.stack([labels == i + 1 for i in range(n)]) if n else torch.zeros(0, *labels.shape, dtype=torch.bool)
    return SegmentationOutput(class_names=list(class_names), logits=logits, probs=probs, labels=labels, masks=masks,
                              confidence=confidence, entropy=fn.normalised_entropy(probs.unsqueeze(0))[0],
                              robust_tower=robust_tower, restored=restored, inference=inference, windows=windows)


# ------------------------------------------------------------------------------------ internal data
@dataclass
class Encoded:
    """Cached features of one image at encoder resolution."""

    taps: list[Tensor]  # each C x h x w
    z: Tensor  # D x h x w
    rgb: Tensor  # 3 x H' x W' normalised encoder input (for the decoder's RGB stem)
    size: tuple[int, int]  # original H, W
    robust_share: float = 0.0  # share of its encoder inputs encoded by the robust tower (the quality gate's choice)
    restored_share: float = 0.0  # share of its encoder inputs filtered (deblurred or smoothed) before they were
    # encoded again


@dataclass
class ClassSpec:
    """One class of a request: its name, text embedding and encoded support examples."""

    name: str
    text: Tensor | None  # D normalised
    supports: list[tuple[Encoded, Tensor]]  # (features, mask at encoder input size H' x W' in {0,1,255})


def input_kind(spec: ClassSpec) -> str:
    """``text``, ``shots`` or ``text+shots``: what the class was given as (one of INPUT_KINDS)."""
    if spec.supports:
        return "text+shots" if spec.text is not None else "shots"
    return "text"


