"""Evaluation harness: zero-shot, K-shot and text+K-shot scored on the same seeded episodes.

``evaluate(segmenter, benchmark, folds, shots, episodes, seeds, modes)`` samples (or reloads) one episode list
per (fold, seed) with the largest K asked, and scores every row on it: for each mode (training-free, learned)
the inputs ``text`` (0 shots), ``examples`` and ``text+examples`` (each K > 0, the first K supports of each
class), plus two trivial baselines: ``all-foreground`` and ``oracle-patch-grid`` (the ground truth pooled to the
encoder's patch grid by area majority and upsampled back: the best any patch-level prediction can do).

Scoring follows the field (see ``vlfss.metrics``): class-wise mIoU from summed counts, FB-IoU, per-class
IoU/precision/recall/F1, episode-wise IoU with a 95% CI; label 255 ignored. Labels are scored at their
original resolution; with ``resized_labels`` the label map is resized (nearest) to the encoder input size
(long side ``input_size``, sides multiples of the patch) and the model's probabilities, which come back at the
original size, are resized (bilinear, antialiased) to that size before the argmax.

Uncertainty: ECE of the per-pixel max probability (equal-width bins (lo, hi]), mean normalised entropy on
correct and wrong pixels, and a risk-coverage curve: per query the least confident X% of its valid pixels
are rejected (treated as ignored) and the mIoU of the rest is reported. All sums are integers (confidence and
entropy in fixed point), so sharded runs under torchrun (episodes ``range(rank, N, world)``, sums
all-reduced) give the same numbers as one process. Every image is encoded once per dense variant (one at a
time, so features do not depend on batching) and reused by all modes, inputs and shots through the
segmenter's feature cache; a learned head trained on another dense variant costs one more encode per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.benchmark import Benchmark
from ..data.episodes import EpisodeSampler, EpisodeSpec, load_episode, load_episodes, save_episodes, shard
from ..errors import DataError, InputError, ModelError, VlfssError
from ..modeling.functional import normalised_entropy
from .metrics import IGNORE, FSSMeter
from .report import append_jsonl, read_jsonl, rewrite_jsonl

logger = logging.getLogger(__name__)

MODES = ("training-free", "learned")
INPUTS = ("text", "examples", "text+examples")
BASELINE = "baseline"
BASELINES = ("all-foreground", "oracle-patch-grid")
DEFAULT_REJECT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
FIXED_POINT = 1 << 20  # confidence / entropy sums are int64 in units of 2^-20: exact and order-free
RESULTS_FILE = "results.jsonl"
BenchmarkLike = Benchmark | Callable[[int], Benchmark]


# ------------------------------------------------------------------------------------------ pure maths
def _fixed(x: Tensor) -> Tensor:
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
    out[:, 1].index_add_(0, idx, _fixed(conf))
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


# ------------------------------------------------------------------------------------------ accumulation
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
            self.entropy += torch.stack([_fixed(ent[ok]).sum(), ok.sum(), _fixed(ent[bad]).sum(), bad.sum()])
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
        import torch.distributed as dist

        out = RowStats(self.num_classes, self.reject, self.ece_bins)
        out.meter = self.meter.all_reduce()
        out.reject_meters = [m.all_reduce() for m in self.reject_meters]
        parts = self._tensors()
        flat = torch.cat([p.reshape(-1) for p in parts])
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cpu")
            if dist.get_backend() == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            flat = flat.to(device)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat = flat.cpu()
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
            valid = int(self.valid[0])
            cal = self.calib.tolist()
            out["ece"] = ece_from_counts(self.calib)
            out["calibration"] = {
                "bins": self.ece_bins, "count": [c[0] for c in cal],
                "confidence": [c[1] / FIXED_POINT / c[0] if c[0] else None for c in cal],
                "accuracy": [c[2] / c[0] if c[0] else None for c in cal]}
            out["pixel_accuracy"] = int(self.calib[:, 2].sum()) / valid if valid else float("nan")
            e = self.entropy.tolist()
            out["entropy_correct"] = e[0] / FIXED_POINT / e[1] if e[1] else None
            out["entropy_wrong"] = e[2] / FIXED_POINT / e[3] if e[3] else None
            out["risk_coverage"] = [
                {"reject": frac, "coverage": int(self.kept[j]) / valid if valid else float("nan"),
                 "miou": self.reject_meters[j].miou(present)} for j, frac in enumerate(self.reject)]
        return out


# ------------------------------------------------------------------------------------------ options & results
@dataclass
class EvalOptions:
    """How ``evaluate`` samples, scores and writes (everything but the model, benchmark, folds, shots, seeds)."""

    n_way: int = 1  # classes per episode
    query_sampling: str = "class"  # "class" (balanced over classes) or "pair" (uniform over image-class pairs)
    resized_labels: bool = False  # score at the encoder input size instead of the original label size
    reject: tuple[float, ...] = DEFAULT_REJECT  # fractions of least confident pixels rejected (risk-coverage)
    ece_bins: int = 15  # equal-width confidence bins for the ECE
    baselines: bool = True  # add the all-foreground and patch-grid oracle rows
    episode_files: list[str] | None = None  # saved episode lists to reuse (one per fold and seed)
    out_dir: str | None = None  # results.jsonl, episodes/, table.md, summary.json, plots; None writes nothing
    resume: bool = False  # skip rows already in out_dir/results.jsonl for the same config and episodes
    overwrite: bool = False  # start a fresh results.jsonl when one exists
    plots: bool = True  # write the PNG plots (needs matplotlib)
    progress: bool = True  # tqdm progress bar with ETA (rank 0 only)
    command: str | None = None  # recorded in every row (the CLI passes its command line)
    cache_items: int | None = None  # feature cache size; None: enough to hold every distinct image of the run
    benchmark_meta: dict[str, Any] = field(default_factory=dict)  # options saved with episodes (e.g. convention)


@dataclass
class EvalResults:
    """Rows of a run (including rows resumed from out_dir) and where the outputs went."""

    rows: list[dict[str, Any]]  # JSON-ready rows; see ``ResultRow``
    cache: dict[str, Any]  # feature-cache hits, misses, hit_rate, image_encodes, distinct_images, variants
    files: dict[str, str] = field(default_factory=dict)  # name -> path of each written output

    def table(self) -> str:
        """The markdown mIoU table (rows: mode/input/shots; columns: folds and mean)."""
        from .report import markdown_table

        return markdown_table(self.rows)

    def get(self, mode: str, input: str, shots: int, fold: int | None = None,
            seed: int | None = None) -> list[dict[str, Any]]:
        """Rows matching the given keys."""
        return [r for r in self.rows if r["mode"] == mode and r["input"] == input and r["shots"] == shots
                and (fold is None or r["fold"] == fold) and (seed is None or r["seed"] == seed)]


@dataclass
class ResultRow:
    """One line of results.jsonl: one fold x mode x input x shots x seed."""

    benchmark: str  # benchmark name
    split: str  # dataset split scored
    fold: int  # fold whose novel classes were scored
    seed: int  # episode seed
    mode: str  # training-free | learned | baseline
    input: str  # text | examples | text+examples | all-foreground | oracle-patch-grid
    shots: int  # K supports per class (0 for text and baselines)
    n_way: int  # classes per episode
    resolution: str  # "original" label size or "resized" to the encoder input
    metrics: dict[str, Any]  # RowStats.metrics(): miou, fb_iou, per_class, ..., ece, risk_coverage
    episode_hash: str  # content hash of the episode list (same for every row of a fold and seed)
    episodes_file: str | None  # where the episode list was saved / read
    config_hash: str  # hash of model, head, options: rows with equal hashes are comparable and resumable
    model: str  # backbone model id
    head: str | None  # digest of the learned head's weights (learned rows) or None
    variant: str  # dense variant of the features used
    command: str  # the command line (or "python API")
    versions: dict[str, str]  # python and package versions

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        metrics = d.pop("metrics")
        d.update(metrics)
        return _finite(d)


def _finite(x: Any) -> Any:
    """nan/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def row_key(row: dict[str, Any]) -> tuple:
    """What makes a row unique within a results file (for --resume); learned rows also by their head."""
    return (row["config_hash"], row.get("head"), row["episode_hash"], row["fold"], row["seed"], row["mode"],
            row["input"], row["shots"])


# ------------------------------------------------------------------------------------------ helpers
def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: Any) -> Any:
    """rank 0's ``obj`` on every rank (identity in one process)."""
    import torch.distributed as dist

    if _dist()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def package_versions() -> dict[str, str]:
    """Versions of python and the packages that decide the numbers."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("vlfss", "torch", "open_clip_torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def module_digest(module: torch.nn.Module | None) -> str | None:
    """sha256 (16 hex) of a module's parameters and buffers, in state-dict order."""
    if module is None:
        return None
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def row_plan(modes: Sequence[str], shots: Sequence[int], baselines: bool, has_text: bool = True
             ) -> list[tuple[str, str, int]]:
    """(mode, input, shots) of every row, in table order."""
    out: list[tuple[str, str, int]] = []
    for mode in modes:
        for k in shots:
            if k == 0:
                if has_text:
                    out.append((mode, "text", 0))
            else:
                out.append((mode, "examples", k))
                if has_text:
                    out.append((mode, "text+examples", k))
    if baselines:
        out += [(BASELINE, b, 0) for b in BASELINES]
    return out


def _check_int_list(name: str, values: Sequence[int], lo: int) -> list[int]:
    vals = list(values)
    if not vals:
        raise InputError(f"{name} is empty")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be integers >= {lo}, got {v!r}")
    if len(set(vals)) != len(vals):
        raise InputError(f"{name} has duplicates: {vals}")
    return [int(v) for v in vals]


def _normalise_modes(modes: Sequence[str] | str) -> list[str]:
    modes = [modes] if isinstance(modes, str) else list(modes)
    out: list[str] = []
    for m in modes:
        for x in (MODES if m == "both" else (m,)):
            if x not in MODES:
                raise InputError(f"unknown mode {x!r}; choose training-free, learned or both")
            if x not in out:
                out.append(x)
    if not out:
        raise InputError("no mode given; choose training-free, learned or both")
    return out


@dataclass
class _Group:
    """One (fold, seed): its episodes and the rows still to compute."""

    fold: int
    seed: int
    specs: list[EpisodeSpec]
    episode_hash: str
    episodes_file: str | None
    todo: list[tuple[str, str, int]]


def _episode_meta(bench: Benchmark, fold: int, seed: int, opts: EvalOptions, n: int) -> dict[str, Any]:
    return {"benchmark": bench.name, "fold": fold, "seed": seed, "split": bench.split, "num_episodes": n,
            "query_sampling": opts.query_sampling, "num_images": len(bench.dataset), **opts.benchmark_meta}


def _hash_specs(specs: list[EpisodeSpec], meta: dict[str, Any], path: Path | None) -> tuple[str, str | None]:
    """Save the episode list (to ``path``, or a scratch file) and return (hash, saved path)."""
    if path is not None:
        return save_episodes(path, specs, meta), str(path)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vlfss-episodes-") as tmp:
        return save_episodes(Path(tmp) / "episodes.json", specs, meta), None


def _load_episode_files(files: Sequence[str], bench_of: Callable[[int], Benchmark], opts: EvalOptions,
                        folds: list[int] | None, kmax: int) -> list[tuple[int, int, list[EpisodeSpec], str, str]]:
    """(fold, seed, specs, hash, path) from saved episode files, checked against the benchmark."""
    out = []
    for f in files:
        _, meta = load_episodes(f)
        fold, seed = meta.get("fold"), meta.get("seed")
        if not isinstance(fold, int) or not isinstance(seed, int):
            raise DataError(f"episodes file {f} does not say its fold and seed; regenerate it with `vlfss eval`")
        if folds is not None and fold not in folds:
            continue
        bench = bench_of(fold)
        specs, meta = load_episodes(f, benchmark=bench.name, fold=fold, shots=kmax)
        for key, want in (("split", bench.split), ("n_way", opts.n_way), *opts.benchmark_meta.items()):
            if key in meta and meta[key] != want:
                raise DataError(f"episodes file {f} was made with {key}={meta[key]!r}, this run has {want!r}")
        novel = set(bench.novel_classes(fold))
        bad = sorted({c for s in specs for c in s.class_ids} - novel)
        if bad:
            raise DataError(f"episodes file {f} holds classes {bad[:5]} that are not novel in fold {fold} of "
                            f"{bench.name} (another split convention or dataset?)")
        out.append((fold, seed, specs, meta["hash"], str(f)))
    if folds is not None:
        missing = sorted(set(folds) - {o[0] for o in out})
        if missing:
            raise DataError(f"no episodes file for fold(s) {missing} among {list(files)}")
    keys = [(o[0], o[1]) for o in out]
    if len(set(keys)) != len(keys):
        raise DataError("two episodes files are for the same fold and seed; pass one per (fold, seed)")
    return sorted(out, key=lambda o: (o[1], o[0]))


def config_hash(segmenter: Any, bench_name: str, split: str, opts: EvalOptions) -> str:
    """Hash of everything that decides a row's numbers besides its episodes and the head (kept per row)."""
    cfg = segmenter.cfg
    blob = {
        "model": segmenter.backbone.model_id, "variant": segmenter.variant, "head_variant": segmenter.head_variant,
        "templates": list(getattr(segmenter, "templates", [])), "input_size": cfg.input_size,
        "training_free": dataclasses.asdict(cfg.training_free), "prompts": sorted(segmenter.prompt_learners),
        "benchmark": bench_name, "split": split, "n_way": opts.n_way, "resized_labels": opts.resized_labels,
        "reject": list(opts.reject), "ece_bins": opts.ece_bins, "meta": opts.benchmark_meta,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ the harness
def evaluate(
    segmenter: Any,
    benchmark: BenchmarkLike,
    folds: Sequence[int] | None = None,
    shots: Sequence[int] = (0, 1, 5),
    episodes: int = 1000,
    seeds: Sequence[int] = (0,),
    modes: Sequence[str] | str = ("training-free",),
    options: EvalOptions | None = None,
    fold_heads: dict[int, Any] | None = None,
    **overrides: Any,
) -> EvalResults:
    """Score every mode x input x shots row on the same episodes of each (fold, seed).

    ``benchmark``: a Benchmark (used for every fold) or ``fold -> Benchmark`` (PASCAL-5i's lists are per fold).
    ``folds`` default: all. ``modes``: "training-free", "learned" or "both". ``options``/``overrides``: see
    ``EvalOptions``. With ``episode_files`` the folds and seeds come from the files (``folds`` filters).
    ``fold_heads``: a learned head per fold (fold i's head meta-trained without fold i's classes, as the
    protocol needs); folds without one use ``segmenter.head``.
    Under torchrun every rank calls this; episodes are sharded and sums all-reduced; rank 0 writes files.
    """
    try:
        opts = dataclasses.replace(options or EvalOptions(), **overrides)
    except TypeError as e:
        raise InputError(f"unknown evaluate option: {e}") from None
    rank, world = _dist()
    bench_of = _bench_factory(benchmark)
    folds_l = None if folds is None else _check_int_list("folds", folds, 0)
    bench0 = bench_of(folds_l[0] if folds_l else 0)
    folds_l = list(range(bench0.num_folds)) if folds_l is None else folds_l
    for f in folds_l:
        if f >= bench0.num_folds:
            raise InputError(f"{bench0.name}: fold must be 0..{bench0.num_folds - 1} or 'all', got {f}")
    shots_l = sorted(_check_int_list("shots", shots, 0))
    seeds_l = _check_int_list("seeds", seeds, 0)
    modes_l = _normalise_modes(modes)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise InputError(f"episodes must be a positive integer, got {episodes!r}")
    if not 0 < opts.ece_bins <= 1000:
        raise InputError(f"ece_bins must be 1..1000, got {opts.ece_bins}")
    for x in opts.reject:
        if not 0.0 <= x < 1.0:
            raise InputError(f"rejection fractions must be in [0, 1), got {x}")
    heads = dict(fold_heads or {})
    default_head = segmenter.head

    def head_of(fold: int) -> Any:
        return heads.get(fold, default_head)

    if "learned" in modes_l and any(head_of(f) is None for f in range(bench0.num_folds)
                                    if folds is None or f in folds_l):
        raise ModelError("learned mode needs a trained head: pass --head FILE (from `vlfss train`) or use "
                         "--mode training-free")
    has_text = bool(segmenter.backbone.has_text)
    plan_rows = row_plan(modes_l, shots_l, opts.baselines, has_text)
    if not has_text:
        logger.warning("model %s has no text encoder: text rows are skipped", segmenter.backbone.model_id)
    chash = config_hash(segmenter, bench0.name, bench0.split, opts)
    # weights, not the file name, identify a head; one per fold
    digests = ({f: module_digest(head_of(f)) for f in range(bench0.num_folds) if head_of(f) is not None}
               if "learned" in modes_l else {})
    out_dir = Path(opts.out_dir) if opts.out_dir else None
    results_path = out_dir / RESULTS_FILE if out_dir else None

    # --- plan on rank 0 (episodes sampled or loaded, files written, resume decided), then broadcast
    plan: Any = None
    failure: Exception | None = None
    if rank == 0:
        try:
            plan = ("ok", _plan(bench_of, folds_l if folds is not None or not opts.episode_files else None,
                                shots_l, episodes, seeds_l, opts, plan_rows, chash, digests, out_dir,
                                results_path))
        except Exception as e:  # every rank must leave the broadcast below, then fail alike
            if world == 1:
                raise
            plan, failure = ("error", type(e).__name__, str(e)), e
    plan = _broadcast(plan)
    if plan[0] == "error":
        if failure is not None:
            raise failure
        from .. import errors

        err = getattr(errors, plan[1], None)
        raise (err if isinstance(err, type) and issubclass(err, VlfssError) else RuntimeError)(plan[2])
    groups, old_rows = plan[1]

    versions = package_versions()
    variants = sorted({segmenter.variant if m == "training-free" else segmenter.head_variant for m in modes_l})
    distinct = {(id(bench_of(g.fold).dataset), i) for g in groups for s in g.specs
                for i in (s.query_id, *s.support_ids)}
    want_items = opts.cache_items if opts.cache_items is not None else len(distinct) * len(variants) + 16
    if segmenter.cache.max_items < want_items:
        segmenter.cache.max_items = want_items
    hits0, misses0, enc0 = segmenter.cache.hits, segmenter.cache.misses, segmenter.image_encodes

    from tqdm import tqdm

    total = sum(len(shard(len(g.specs), rank, world)) for g in groups if g.todo)
    bar = tqdm(total=total, desc="eval", unit="ep", disable=not opts.progress or rank != 0 or total == 0,
               dynamic_ncols=True)
    new_rows: list[dict[str, Any]] = []
    try:
        for g in groups:
            if not g.todo:
                continue
            bench = bench_of(g.fold)
            bar.set_postfix_str(f"fold {g.fold} seed {g.seed}")
            segmenter.head = head_of(g.fold)
            stats = _run_group(segmenter, bench, g, opts, rank, world, bar)
            reduced = {key: stats[key].all_reduce() for key in g.todo}
            novel = bench.novel_classes(g.fold)
            for mode, inp, k in g.todo:
                row = ResultRow(
                    benchmark=bench.name, split=bench.split, fold=g.fold, seed=g.seed, mode=mode, input=inp, shots=k,
                    n_way=opts.n_way, resolution="resized" if opts.resized_labels else "original",
                    metrics=reduced[(mode, inp, k)].metrics(bench.class_names, novel),
                    episode_hash=g.episode_hash, episodes_file=g.episodes_file, config_hash=chash,
                    model=segmenter.backbone.model_id,
                    head=digests.get(g.fold) if mode == "learned" else None,
                    variant=segmenter.head_variant if mode == "learned" else segmenter.variant,
                    command=opts.command or "python API", versions=versions).to_json()
                new_rows.append(row)
                if rank == 0 and results_path is not None:
                    append_jsonl(results_path, row)
    finally:
        bar.close()
        segmenter.head = default_head

    cache = _cache_stats(segmenter, hits0, misses0, enc0, len(distinct), variants)
    order = {k: i for i, k in enumerate(plan_rows)}
    rows = sorted(old_rows + new_rows, key=lambda r: (r["seed"], r["fold"], order.get((r["mode"], r["input"],
                                                                                       r["shots"]), 0)))
    files: dict[str, str] = {}
    if rank == 0 and out_dir is not None:
        from .report import write_report

        files = write_report(rows, out_dir, plots=opts.plots, cache=cache)
        files["results"] = str(results_path)
        for g in groups:
            if g.episodes_file:
                files[f"episodes_fold{g.fold}_seed{g.seed}"] = g.episodes_file
    logger.info("feature cache: %s", cache)
    return EvalResults(rows=rows, cache=cache, files=files)


def _bench_factory(benchmark: BenchmarkLike) -> Callable[[int], Benchmark]:
    if isinstance(benchmark, Benchmark):
        return lambda fold: benchmark
    if callable(benchmark):
        memo: dict[int, Benchmark] = {}

        def get(fold: int) -> Benchmark:
            if fold not in memo:
                memo[fold] = benchmark(fold)
            return memo[fold]

        return get
    raise InputError(f"benchmark must be a Benchmark or a fold -> Benchmark function, got {type(benchmark).__name__}")


def _plan(bench_of, folds, shots, episodes, seeds, opts, plan_rows, chash, digests, out_dir, results_path):
    """Episode lists per (fold, seed) and the rows each still needs; writes episode files; reads old rows."""
    kmax = max(shots)
    old_rows: list[dict[str, Any]] = []
    if results_path is not None:
        if results_path.exists():
            rows, torn = read_jsonl(results_path)
            if opts.resume:
                other = {r.get("config_hash") for r in rows} - {chash}
                if other:
                    raise InputError(f"{results_path} holds rows of another configuration (model or options "
                                     f"differ); use another --out, or --overwrite to replace them")
                if any(r.get("head") != digests.get(r.get("fold")) for r in rows
                       if r.get("mode") == "learned" and r.get("fold") in digests):
                    raise InputError(f"{results_path} holds learned rows of another head; use another --out, or "
                                     "--overwrite to replace them")
                if torn:
                    logger.warning("%s ends with an incomplete row (interrupted write); dropping it", results_path)
                    rewrite_jsonl(results_path, rows)
                old_rows = rows
            elif opts.overwrite:
                results_path.unlink()
            elif rows or torn:
                raise InputError(f"{results_path} already holds results; pass --resume to continue that run, "
                                 "--overwrite to replace it, or choose another --out")
    lists: list[tuple[int, int, list[EpisodeSpec], str, str | None]] = []
    if opts.episode_files:
        lists = _load_episode_files(opts.episode_files, bench_of, opts, folds, kmax)
    else:
        for seed in seeds:
            for fold in folds:
                bench = bench_of(fold)
                sampler = EpisodeSampler(bench.dataset, bench.novel_classes(fold), opts.n_way, kmax, seed, episodes,
                                         opts.query_sampling)
                specs = sampler.specs()
                meta = _episode_meta(bench, fold, seed, opts, episodes)
                path = None
                if out_dir is not None:
                    ways = f"-{opts.n_way}way" if opts.n_way > 1 else ""
                    name = f"{bench.name}-{bench.split}-fold{fold}-seed{seed}-{episodes}ep-{kmax}shot{ways}.json"
                    path = out_dir / "episodes" / name
                h, saved = _hash_specs(specs, meta, path)
                lists.append((fold, seed, specs, h, saved))

    def key(h: str, fold: int, seed: int, row: tuple[str, str, int]) -> tuple:
        return (chash, digests.get(fold) if row[0] == "learned" else None, h, fold, seed, *row)

    done = {row_key(r) for r in old_rows}
    groups = []
    for fold, seed, specs, h, saved in lists:
        todo = [k for k in plan_rows if key(h, fold, seed, k) not in done]
        groups.append(_Group(fold, seed, specs, h, saved, todo))
    keep = {key(g.episode_hash, g.fold, g.seed, k) for g in groups for k in plan_rows}
    old_rows = [r for r in old_rows if row_key(r) in keep]
    skipped = sum(len(plan_rows) - len(g.todo) for g in groups)
    if skipped:
        logger.info("resuming: %d of %d rows already in %s", skipped, len(plan_rows) * len(groups), results_path)
    return groups, old_rows


def _run_group(segmenter: Any, bench: Benchmark, g: _Group, opts: EvalOptions, rank: int, world: int,
               bar: Any) -> dict[tuple[str, str, int], RowStats]:
    """This rank's shard of one (fold, seed): every row's sums."""
    stats = {key: RowStats(bench.dataset.num_classes, opts.reject, opts.ece_bins) for key in g.todo}
    variants = sorted({segmenter.variant if m == "training-free" else segmenter.head_variant
                       for m, _, _ in g.todo if m != BASELINE})
    for i in shard(len(g.specs), rank, world):
        ep = load_episode(bench.dataset, g.specs[i])
        for img in (ep.query_image, *ep.support_images):
            for v in variants:  # one image per call: features do not depend on batching (or on the shard)
                segmenter.encode([img], v)
        target = torch.from_numpy(ep.query_mask).long()
        enc_size = segmenter.encoder_size(*target.shape)
        if opts.resized_labels:
            target = resize_labels(target, enc_size)
        grid = (enc_size[0] // segmenter.backbone.patch_size, enc_size[1] // segmenter.backbone.patch_size)
        for mode, inp, k in g.todo:
            st = stats[(mode, inp, k)]
            if mode == BASELINE:
                _score_baseline(st, inp, target, grid, ep.class_ids, ep.index)
                continue
            texts = ep.texts if inp in ("text", "text+examples") else None
            supports = None
            if inp in ("examples", "text+examples"):
                supports = [[(ep.support_images[j * ep.k_shot + s], ep.support_masks[j * ep.k_shot + s])
                             for s in range(k)] for j in range(ep.n_way)]
            out = segmenter.segment(ep.query_image, texts=texts, supports=supports, mode=mode)
            probs = out.probs
            if opts.resized_labels:
                probs = resize_probs(probs, tuple(target.shape))
            conf, pred = probs.max(0)
            ent = normalised_entropy(probs.unsqueeze(0))[0]
            st.update(pred, target, ep.class_ids, ep.index, conf, ent)
        bar.update(1)
    return stats


def _score_baseline(st: RowStats, kind: str, target: Tensor, grid: tuple[int, int], class_ids: list[int],
                    episode: int) -> None:
    n = len(class_ids)
    if kind == "oracle-patch-grid":
        st.update(patch_grid_oracle(target, grid, n + 1), target, class_ids, episode)
        return
    # all-foreground: each class predicted over the whole image, scored as its own binary episode
    for j, c in enumerate(class_ids):
        binary = torch.where(target == IGNORE, target, (target == j + 1).long())
        st.update(torch.ones_like(target), binary, [c], episode)


def _cache_stats(segmenter: Any, hits0: int, misses0: int, enc0: int, distinct: int,
                 variants: list[str]) -> dict[str, Any]:
    import torch.distributed as dist

    c = torch.tensor([segmenter.cache.hits - hits0, segmenter.cache.misses - misses0,
                      segmenter.image_encodes - enc0], dtype=torch.int64)
    if _dist()[1] > 1:
        if dist.get_backend() == "nccl":
            c = c.cuda()
        dist.all_reduce(c)
        c = c.cpu()
    hits, misses, enc = (int(x) for x in c)
    return {"hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
            "image_encodes": enc, "distinct_images": distinct, "variants": variants}


# ------------------------------------------------------------------------------------------ CLI
@dataclass
class EvalRequest:
    """A parsed `vlfss eval` command: what to build and what to run."""

    benchmark: str  # benchmark name (see vlfss.data.list_benchmarks)
    data_root: str | None  # dataset folder (synthetic: cache root; None = default cache)
    split: str  # dataset split to score
    folds: list[int] | None  # None: all folds (or the folds of --episodes-file)
    shots: list[int]  # K values; 0 means text only
    episodes: int  # episodes per fold and seed
    seeds: list[int]  # episode seeds
    modes: list[str]  # training-free and/or learned
    bench_options: dict[str, Any]  # reader options (e.g. convention for coco20i)
    segmenter_overrides: list[str]  # SegmenterConfig key=value overrides
    head_template: str | None  # --head with "{fold}": one head file per fold
    device: str  # torch device asked for ("cuda" becomes cuda:LOCAL_RANK under torchrun)
    options: EvalOptions  # the rest


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a usage error is bad input: one line, exit 2 via the CLI
        raise InputError(f"{message} (see `vlfss eval --help`)")


def build_eval_parser(cls: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `vlfss eval` argument parser."""
    ap = cls(prog="vlfss eval", description="Score zero-shot vs few-shot on the same episodes.")
    ap.add_argument("--benchmark", required=True, help="pascal5i, coco20i, fss1000, synthetic, folder, hf")
    ap.add_argument("--data-root", default=None, help="dataset folder (synthetic: cache root, default the cache)")
    ap.add_argument("--split", default="test", help="split to score (default test)")
    ap.add_argument("--fold", nargs="+", default=None, help="fold numbers or 'all' (default all)")
    ap.add_argument("--shots", nargs="+", type=int, default=[0, 1, 5], help="K values; 0 = text only")
    ap.add_argument("--episodes", type=int, default=1000, help="episodes per fold and seed")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="episode seeds")
    ap.add_argument("--mode", default="training-free", help="training-free, learned or both")
    ap.add_argument("--ways", type=int, default=1, help="classes per episode")
    ap.add_argument("--query-sampling", default="class", choices=["class", "pair"])
    ap.add_argument("--split-convention", default=None, help="coco20i folds: interleaved (default) or consecutive")
    ap.add_argument("--bench-opt", nargs="*", default=[], metavar="KEY=VALUE",
                    help="benchmark reader options, e.g. n_images=500 image_size=96 for synthetic")
    ap.add_argument("--episodes-file", nargs="+", default=None,
                    help="saved episode lists to reuse (their folds, seeds and episode counts are used)")
    ap.add_argument("--resized-labels", action="store_true",
                    help="score at the encoder input size (labels nearest-resized) instead of the label size")
    ap.add_argument("--reject", nargs="+", type=float, default=list(DEFAULT_REJECT),
                    help="fractions of least confident pixels rejected for the risk-coverage curve")
    ap.add_argument("--ece-bins", type=int, default=15)
    ap.add_argument("--no-baselines", action="store_true", help="skip the all-foreground and oracle rows")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out", default="vlfss_eval", help="output folder")
    ap.add_argument("--resume", action="store_true", help="continue a run: skip rows already in --out")
    ap.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or table")
    ap.add_argument("--cache-items", type=int, default=None, help="in-memory feature cache size")
    ap.add_argument("--model", default="vlfss-tiny", help="backbone name (see `vlfss models`)")
    ap.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local weights file")
    ap.add_argument("--head", default=None, help="learned head weights (safetensors); a path with {fold} names one "
                    "head per fold (fold i's head trained without fold i's classes)")
    ap.add_argument("--variant", default=None, help="dense last-block variant")
    ap.add_argument("--templates", default="default", help="template set name or file")
    ap.add_argument("--input-size", type=int, default=None, help="encoder long side in pixels")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default=None, help="download cache for hub weights")
    ap.add_argument("--feature-cache-dir", default=None, help="on-disk feature cache")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other SegmenterConfig overrides")
    return ap


def parse_eval_args(argv: Sequence[str]) -> EvalRequest:
    """`vlfss eval` arguments -> EvalRequest (InputError on bad values)."""
    args = build_eval_parser(_Parser).parse_args(list(argv))
    from ..data import list_benchmarks

    name = args.benchmark.lower()
    if name not in list_benchmarks():
        raise DataError(f"unknown benchmark {args.benchmark!r}; known benchmarks: {', '.join(list_benchmarks())}")
    folds: list[int] | None = None
    if args.fold is not None and [f.lower() for f in args.fold] != ["all"]:
        try:
            folds = [int(f) for f in args.fold]
        except ValueError:
            raise InputError(f"--fold takes fold numbers or 'all', got {' '.join(args.fold)}") from None
    import yaml

    opts: dict[str, Any] = {}
    for item in args.bench_opt:
        if "=" not in item:
            raise InputError(f"--bench-opt {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        opts[k.strip()] = yaml.safe_load(v) if v else ""
    meta: dict[str, Any] = {}
    if args.split_convention is not None:
        if name != "coco20i":
            raise InputError("--split-convention applies to coco20i only")
        if args.split_convention not in ("interleaved", "consecutive"):
            raise InputError(f"--split-convention must be interleaved or consecutive, got {args.split_convention!r}")
        opts["convention"] = args.split_convention
    if name == "coco20i":
        meta["convention"] = opts.setdefault("convention", "interleaved")
    seg = [f"model={args.model}", f"templates={args.templates}", f"device={args.device}"]
    modes = _normalise_modes(args.mode)
    head_template = args.head if args.head is not None and "{fold}" in args.head else None
    if args.head is not None and head_template is None and not Path(args.head).is_file():
        raise ModelError(f"head weights {args.head} do not exist; train one with `vlfss train` or drop --head")
    seg.append("mode=learned" if "learned" in modes else "mode=training-free")
    for key, val in (("pretrained", args.pretrained), ("head_path", None if head_template else args.head),
                     ("variant", args.variant),
                     ("input_size", args.input_size), ("cache_dir", args.cache_dir),
                     ("feature_cache_dir", args.feature_cache_dir)):
        if val is not None:
            seg.append(f"{key}={val}")
    options = EvalOptions(
        n_way=args.ways, query_sampling=args.query_sampling, resized_labels=args.resized_labels,
        reject=tuple(args.reject), ece_bins=args.ece_bins, baselines=not args.no_baselines,
        episode_files=args.episodes_file, out_dir=args.out, resume=args.resume, overwrite=args.overwrite,
        plots=not args.no_plots, progress=not args.quiet, command="vlfss eval " + shlex.join(list(argv)),
        cache_items=args.cache_items, benchmark_meta=meta)
    return EvalRequest(name, args.data_root, args.split, folds, args.shots, args.episodes, args.seeds, modes, opts,
                       seg + list(args.set), head_template, args.device, options)


def run_eval(argv: Sequence[str], segmenter: Any = None) -> EvalResults:
    """Parse, check the data, build the segmenter (unless given), initialise torchrun if present, evaluate."""
    req = parse_eval_args(argv)
    from ..data import build_benchmark
    from ..io_utils import check_writable_dir

    if req.options.out_dir:
        check_writable_dir(Path(req.options.out_dir))

    def bench_of(fold: int) -> Benchmark:
        return build_benchmark(req.benchmark, req.data_root, req.split, fold, **req.bench_options)

    first = bench_of(req.folds[0] if req.folds else 0)  # data errors before the model loads
    for f in req.folds or []:
        if not 0 <= f < first.num_folds:
            raise InputError(f"{first.name}: fold must be 0..{first.num_folds - 1} or 'all', got {f}")
    factory: BenchmarkLike = bench_of if req.benchmark == "pascal5i" else first
    head_files: dict[int, Path] = {}
    if req.head_template is not None:
        head_files = {f: Path(req.head_template.replace("{fold}", str(f)))
                      for f in (req.folds if req.folds is not None else range(first.num_folds))}
        missing = [str(p) for p in head_files.values() if not p.is_file()]
        if missing:
            raise ModelError(f"--head {req.head_template}: no head file {', '.join(missing)}; train the fold's head "
                             "(`vlfss train --config ...foldN.yaml`, or eval/train_heads.py) or name existing files")
    if segmenter is None:
        from ..config import load_config
        from ..segmenter import Segmenter, SegmenterConfig

        overrides = list(req.segmenter_overrides)
        if head_files:
            overrides.append(f"head_path={next(iter(head_files.values()))}")
        if req.device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one GPU per torchrun rank
            overrides.append(f"device=cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        segmenter = Segmenter.from_config(load_config(SegmenterConfig, None, overrides))
    fold_heads = _load_fold_heads(segmenter, head_files)
    started = _init_distributed(str(segmenter.backbone.device))
    try:
        return evaluate(segmenter, factory, req.folds, req.shots, req.episodes, req.seeds, req.modes, req.options,
                        fold_heads=fold_heads)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _load_fold_heads(segmenter: Any, files: dict[int, Path]) -> dict[int, Any]:
    """One learned head per fold; all must share the dense variant the segmenter's head uses."""
    from ..modeling.head_file import load_head

    heads = {}
    for fold, path in files.items():
        if segmenter.head is not None and segmenter.cfg.head_path == str(path):  # built from this file already
            heads[fold] = segmenter.head
            continue
        head, variant = load_head(path, segmenter.backbone)
        if segmenter.head is not None and variant != segmenter.head_variant:
            raise ModelError(f"head {path} was trained on dense variant {variant!r}, the other folds' heads on "
                             f"{segmenter.head_variant!r}; train every fold's head on one variant")
        if segmenter.head is None:
            segmenter.head, segmenter.head_variant = head, variant
        heads[fold] = head
    return heads


def _init_distributed(device: str) -> bool:
    """Join the torchrun process group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1; True if started here."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        dev = torch.device(device)
        torch.cuda.set_device(dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def cli_eval(argv: list[str]) -> int:
    """Entry point of `vlfss eval` (cli.py dispatches here); VlfssError propagates (one line, exit 2)."""
    if any(a in ("-h", "--help") for a in argv):
        build_eval_parser().print_help()
        return 0
    res = run_eval(argv)
    if int(os.environ.get("RANK", "0")) == 0 and "--quiet" not in argv:  # torchrun: rank 0 reports
        print(res.table())
        c = res.cache
        print(f"feature cache: {c['hits']} hits, {c['misses']} misses (hit rate {100 * c['hit_rate']:.1f}%); "
              f"{c['image_encodes']} image encodes for {c['distinct_images']} distinct images x "
              f"{len(c['variants'])} dense variant(s) ({', '.join(c['variants'])})")
        for k, v in sorted(res.files.items()):
            if not k.startswith("episodes_"):
                print(f"{k}: {v}")
    return 0
