"""A quality gate: does an image look degraded (blurred, JPEG-compressed, resampled) to the encoder?

A frozen encoder trained on sharp images loses its classes once fine detail is gone, and a tower distilled to
resist that pays a little on sharp images. The gate lets a model keep both: it reads the sharp tower's own
intermediate tokens (their per-channel mean and spread at each tap, which the image has to be encoded for
anyway), scores them with a small MLP (one hidden layer), and only images scored above its threshold are encoded
again by the robust tower. The threshold sits above every clean calibration image's score, so sharp images keep their
features bit for bit. ``eval/train_quality_gate.py`` fits and checks the shipped gate (docs/tiny-clip.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor

from ..errors import ModelError
from ..io_utils import atomic_save_safetensors, file_digest

GATE_FORMAT = "vlfss-quality-gate-v1"
TENSORS = ("mean", "std", "weight1", "bias1", "weight2")


def gate_features(taps: list[Tensor]) -> Tensor:
    """B x (2 * sum C) features of a batch's taps (each B x C x h x w): every channel's token mean and spread."""
    parts = []
    for t in taps:
        t = t.float().flatten(2)
        parts += [t.mean(-1), t.std(-1, unbiased=True)]
    return torch.cat(parts, dim=1)


def mlp_apply(f: Tensor, mean: Tensor, std: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor,
              bias2: Tensor | float) -> Tensor:
    """A one-hidden-layer GELU MLP on standardised features: B x F -> B (``weight2`` H) or B x G (G x H)."""
    d = f.device
    x = (f - mean.to(d)) / std.to(d)
    hidden = F.gelu(x @ weight1.to(d).T + bias1.to(d))
    w2 = weight2.to(d)
    return hidden @ (w2.T if w2.ndim == 2 else w2) + (bias2.to(d) if isinstance(bias2, Tensor) else bias2)


@dataclass
class QualityGate:
    """A one-hidden-layer MLP (GELU) on ``gate_features``, standardised by the training set's mean and spread."""

    mean: Tensor  # F
    std: Tensor  # F
    weight1: Tensor  # H x F
    bias1: Tensor  # H
    weight2: Tensor  # H
    bias: float
    threshold: float  # scores above it are degraded
    backbone: str  # the model id whose taps it reads
    digest: str = ""  # identifies the fitted gate (cache keys: a refitted gate flags other images)

    def score(self, taps: list[Tensor]) -> Tensor:
        """B degradation scores (log-odds)."""
        return self.score_features(gate_features(taps))

    def score_features(self, f: Tensor) -> Tensor:
        """B scores of B x F ``gate_features``."""
        if f.shape[1] != self.mean.numel():
            raise ModelError(f"quality gate for {self.backbone} reads {self.mean.numel()} features, got "
                             f"{f.shape[1]}: the model's taps differ from the ones it was fitted on")
        return mlp_apply(f, self.mean, self.std, self.weight1, self.bias1, self.weight2, self.bias)

    def flag(self, taps: list[Tensor]) -> Tensor:
        """B booleans: True where the image looks degraded."""
        return self.score(taps) > self.threshold

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        write_fitted(path, GATE_FORMAT, {k: getattr(self, k) for k in TENSORS},
                     {"bias": self.bias, "threshold": self.threshold, "backbone": self.backbone, **(extra or {})})


def write_fitted(path: str | Path, fmt: str, tensors: dict[str, Tensor], meta: dict) -> None:
    """Save a small fitted model (the gate, the restorer): float32 tensors and JSON metadata, atomically."""
    out = {k: t.detach().float().contiguous() for k, t in tensors.items()}
    atomic_save_safetensors(out, path, {"vlfss": json.dumps({"format": fmt, **meta})})


def read_fitted(path: str | Path, fmt: str, names: tuple[str, ...]) -> tuple[dict[str, Tensor], dict, str]:
    """(tensors, metadata, digest) of a file ``write_fitted`` saved in format ``fmt``; raises on anything else."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["vlfss"])
        tensors = {k: f.get_tensor(k) for k in names}
    if meta.get("format") != fmt:
        raise ValueError(f"format {meta.get('format')!r}")
    return tensors, meta, file_digest(path)[:12]


def load_gate(path: str | Path) -> QualityGate:
    """A gate saved by ``QualityGate.save``; one clear error for anything else."""
    try:
        tensors, meta, digest = read_fitted(path, GATE_FORMAT, TENSORS)
        return QualityGate(**tensors, bias=float(meta["bias"]), threshold=float(meta["threshold"]),
                           backbone=str(meta["backbone"]), digest=digest)
    except Exception as e:  # missing, not safetensors, or another kind of file
        raise ModelError(f"quality gate {path} does not load ({type(e).__name__}: {str(e)[:120]}); "
                         "reinstall vlfss or refit it with eval/train_quality_gate.py") from None
