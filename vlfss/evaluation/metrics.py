"""The field's few-shot segmentation metrics, from summed counts so sharded runs add up exactly.

``FSSMeter`` accumulates, per dataset class c, the intersection and union of the foreground of c over all
episodes that include c (int64 sums), and foreground/background intersection and union over all episodes.

- mIoU (class-wise, HSNet/PFENet): IoU_c = sum inter_c / sum union_c, averaged over the classes that
  occurred in some episode. Not the per-image mean of torchmetrics' MeanIoU.
- FB-IoU: the mean of the background IoU and the foreground IoU, each from summed counts; foreground is
  "any episode class" (labels 1..N), so for N > 1 a pixel of class 1 predicted as class 2 counts as
  foreground-correct here but wrong in mIoU.
- Episode-wise IoU: one value per (episode, class), for ``mean_ci``.
All values are fractions in [0, 1] (multiply by 100 for the field's tables). Target label 255 is ignored.
A class whose summed union is 0 (never present, never predicted) scores IoU 1.0; likewise precision or
recall with an empty denominator is 1.0 when the other count is also 0, else 0.0.

Counts are integers, so ``merge``/``all_reduce`` of shards equal one meter over all episodes exactly; the
episode-wise list is kept sorted by (episode, class) so its statistics do not depend on shard order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InputError

logger = logging.getLogger(__name__)

IGNORE = 255
_COUNTS = ("inter", "union", "pred", "target", "episodes")


def _as_long(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise InputError(f"{name} must hold integer labels, got dtype {x.dtype}")
    return x.long()


def _ratio(num: int, den: int, other: int) -> float:
    """num / den; 1.0 if den == 0 and other == 0 (nothing to find, nothing found), else 0.0 for den == 0."""
    if den > 0:
        return num / den
    return 1.0 if other == 0 else 0.0


class FSSMeter:
    """Accumulates few-shot segmentation counts for ``num_classes`` dataset classes (see module docstring)."""

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        z = lambda: torch.zeros(num_classes, dtype=torch.int64)  # noqa: E731
        self.inter, self.union, self.pred, self.target, self.episodes = z(), z(), z(), z(), z()
        self.fb_inter = torch.zeros(2, dtype=torch.int64)  # [background, foreground]
        self.fb_union = torch.zeros(2, dtype=torch.int64)
        self._rows: list[tuple[int, int, int, int]] = []  # (episode, class, inter, union) per episode-class
        self._auto_episode = 0

    # ------------------------------------------------------------------ accumulate
    def update(
        self, pred: Any, target: Any, class_ids: Sequence[int], episode: int | None = None
    ) -> None:
        """Add one episode: ``pred`` and ``target`` are H x W label maps (0 bg, j+1 for ``class_ids[j]``).

        ``target`` may hold 255 (ignored); ``pred`` must hold 0..N. ``episode`` (the sampler's index) orders
        the episode-wise list identically across shards; without it a local counter is used.
        """
        p, t = _as_long(pred, "pred"), _as_long(target, "target")
        if p.shape != t.shape or p.dim() != 2:
            raise InputError(f"pred and target must be H x W maps of one size, got {tuple(p.shape)} and "
                             f"{tuple(t.shape)}; resize the prediction to the label size first")
        ids = [int(c) for c in class_ids]
        n = len(ids)
        if n == 0 or len(set(ids)) != n or any(not 0 <= c < self.num_classes for c in ids):
            raise InputError(f"class_ids must be distinct ids in 0..{self.num_classes - 1}, got {list(class_ids)}")
        t = t.to(p.device)
        valid = t != IGNORE
        t, p = t[valid], p[valid]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > n):
            raise InputError(f"target holds labels outside 0..{n} and 255 for a {n}-class episode "
                             f"(got {int(t.min())}..{int(t.max())}); relabel it as the episode does")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) > n):
            raise InputError(f"pred holds labels outside 0..{n} for a {n}-class episode "
                             f"(got {int(p.min())}..{int(p.max())})")
        k = n + 1
        conf = torch.bincount((t * k + p).flatten(), minlength=k * k).reshape(k, k).cpu()  # target x pred
        inter = conf.diagonal()[1:]
        pred_area = conf.sum(0)[1:]
        tgt_area = conf.sum(1)[1:]
        union = pred_area + tgt_area - inter
        idx = torch.tensor(ids, dtype=torch.int64)
        self.inter.index_add_(0, idx, inter)
        self.union.index_add_(0, idx, union)
        self.pred.index_add_(0, idx, pred_area)
        self.target.index_add_(0, idx, tgt_area)
        self.episodes.index_add_(0, idx, torch.ones(n, dtype=torch.int64))
        bg_i = conf[0, 0]
        bg_u = conf[0, :].sum() + conf[:, 0].sum() - bg_i
        fg_i = conf[1:, 1:].sum()
        fg_u = conf[1:, :].sum() + conf[:, 1:].sum() - fg_i
        self.fb_inter += torch.stack([bg_i, fg_i])
        self.fb_union += torch.stack([bg_u, fg_u])
        ep = self._auto_episode if episode is None else int(episode)
        self._auto_episode += 1
        for j, c in enumerate(ids):
            self._rows.append((ep, c, int(inter[j]), int(union[j])))

    # ------------------------------------------------------------------ combine
    def state(self) -> dict[str, torch.Tensor]:
        """All counts as int64 tensors (``rows``: E x 4 of episode, class, inter, union)."""
        rows = torch.tensor(sorted(self._rows), dtype=torch.int64).reshape(-1, 4)
        out = {k: getattr(self, k).clone() for k in _COUNTS}
        out.update(fb_inter=self.fb_inter.clone(), fb_union=self.fb_union.clone(), rows=rows)
        return out

    def merge(self, other: FSSMeter | dict[str, torch.Tensor]) -> FSSMeter:
        """Add another meter's (or ``state()``'s) counts into this one; returns self."""
        st = other.state() if isinstance(other, FSSMeter) else other
        if st["inter"].numel() != self.num_classes:
            raise InputError(f"cannot merge a meter over {st['inter'].numel()} classes into one over "
                             f"{self.num_classes}")
        for k in _COUNTS:
            getattr(self, k).add_(st[k].to(torch.int64).cpu())
        self.fb_inter += st["fb_inter"].to(torch.int64).cpu()
        self.fb_union += st["fb_union"].to(torch.int64).cpu()
        self._rows.extend(tuple(int(v) for v in r) for r in st["rows"].tolist())
        return self

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> FSSMeter:
        m = cls(int(state["inter"].numel()))
        return m.merge(state)

    def all_reduce(self, group: Any = None) -> FSSMeter:
        """A new meter with the sums over all processes of ``torch.distributed`` (a copy if not initialised).

        Every rank must call it (it is a collective). Counts go through ``all_reduce(SUM)`` on a CPU tensor
        (gloo) or the current CUDA device (NCCL); the episode-wise rows through ``all_gather_object``.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return FSSMeter.from_state(self.state())
        st = self.state()
        flat = torch.cat([st[k] for k in _COUNTS] + [st["fb_inter"], st["fb_union"]])
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        flat = flat.to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat = flat.cpu()
        world = dist.get_world_size(group)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, st["rows"].tolist(), group=group)
        c = self.num_classes
        out = FSSMeter(c)
        for i, k in enumerate(_COUNTS):
            getattr(out, k).copy_(flat[i * c:(i + 1) * c])
        out.fb_inter.copy_(flat[len(_COUNTS) * c:len(_COUNTS) * c + 2])
        out.fb_union.copy_(flat[len(_COUNTS) * c + 2:])
        out._rows = [tuple(r) for rows in gathered for r in rows]
        return out

    # ------------------------------------------------------------------ report
    def occurred(self) -> list[int]:
        """Classes that appeared in at least one episode."""
        return torch.nonzero(self.episodes > 0).flatten().tolist()

    def per_class_iou(self) -> dict[int, float]:
        """IoU_c = sum inter / sum union for each class that occurred."""
        return {c: _ratio(int(self.inter[c]), int(self.union[c]), 0) for c in self.occurred()}

    def miou(self, classes: Sequence[int] | None = None) -> float:
        """The field's class-wise mIoU over the classes that occurred (or over those of ``classes`` that did)."""
        ious = self.per_class_iou()
        if classes is not None:
            missing = [c for c in classes if c not in ious]
            if missing:
                logger.warning("classes %s never occurred in an episode; left out of the mIoU", missing)
            ious = {c: ious[c] for c in classes if c in ious}
        if not ious:
            return float("nan")
        return math.fsum(ious.values()) / len(ious)

    def fb_iou(self) -> float:
        """Mean of background and foreground IoU from the summed counts."""
        if int(self.episodes.sum()) == 0:
            return float("nan")
        bg = _ratio(int(self.fb_inter[0]), int(self.fb_union[0]), 0)
        fg = _ratio(int(self.fb_inter[1]), int(self.fb_union[1]), 0)
        return (bg + fg) / 2

    def precision(self) -> dict[int, float]:
        """Per class: sum inter / sum predicted pixels."""
        return {c: _ratio(int(self.inter[c]), int(self.pred[c]), int(self.target[c])) for c in self.occurred()}

    def recall(self) -> dict[int, float]:
        """Per class: sum inter / sum target pixels."""
        return {c: _ratio(int(self.inter[c]), int(self.target[c]), int(self.pred[c])) for c in self.occurred()}

    def f1(self) -> dict[int, float]:
        """Per class harmonic mean of precision and recall (Dice of the summed counts)."""
        p, r = self.precision(), self.recall()
        return {c: (2 * p[c] * r[c] / (p[c] + r[c]) if p[c] + r[c] > 0 else 0.0) for c in p}

    def episode_ious(self) -> list[tuple[int, int, float]]:
        """(episode, class, IoU) per episode-class, sorted by episode then class."""
        return [(e, c, _ratio(i, u, 0)) for e, c, i, u in sorted(self._rows)]

    def summary(self, confidence: float = 0.95) -> dict[str, Any]:
        """mIoU, FB-IoU, per-class IoU and the episode-wise mean IoU with its confidence half-width."""
        values = [v for _, _, v in self.episode_ious()]
        mean, half = mean_ci(values, confidence) if values else (float("nan"), float("nan"))
        return {
            "miou": self.miou(), "fb_iou": self.fb_iou(), "per_class_iou": self.per_class_iou(),
            "episode_miou": mean, "episode_ci": half, "episodes": len({e for e, _, _, _ in self._rows}),
        }


# ------------------------------------------------------------------------------------------ statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (bisection on ``t_cdf``; exact to ~1e-10)."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise InputError(f"t_ppf needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def mean_ci(values: Sequence[float], confidence: float = 0.95, method: str = "t") -> tuple[float, float]:
    """(mean, half-width) of the ``confidence`` interval of the mean of ``values``.

    ``method`` "t" uses Student's t with n-1 degrees of freedom, "normal" the normal quantile. Sums use
    ``math.fsum`` so the result does not depend on the order of ``values``. One value gives half-width nan.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise InputError("mean_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    if method not in ("t", "normal"):
        raise InputError(f"method must be 't' or 'normal', got {method!r}")
    n = len(vals)
    mean = math.fsum(vals) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    q = 0.5 + confidence / 2.0
    crit = t_ppf(q, n - 1) if method == "t" else NormalDist().inv_cdf(q)
    return mean, crit * sd / math.sqrt(n)
