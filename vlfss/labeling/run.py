"""``label``: a whole dataset from a few examples, batched, resumable and shared out over processes.

The class side of the request (text embeddings, encoded supports) is prepared once; the images stream through
``loop.Loop`` in fixed batches; each process takes every world-th batch of the sorted list (``--shard I/N``
and torchrun's ``RANK`` / ``WORLD_SIZE`` compose: share ``I * W + RANK`` of ``N * W``). The first process to
see every image recorded writes the published files (``finalize``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import FeatureCache
from ..data.image import load_image
from ..engine.distributed import DistContext, barrier, cleanup, init_distributed
from ..errors import InputError
from ..io_utils import atomic_write_text, check_writable_dir
from .config import LabelConfig, check_label_config, parse_shard
from .finalize import complete, finalize
from .loop import Loop, chunks
from .precision import PrecisionChoice, measure_speedup, resolve_precision
from .sources import ImageSource, resolve_sources
from .state import STATE_DIR, Journal, claim_output, journal_path, read_refs, recorded_run, sweep_temporaries
from .writers import MAX_CLASSES, ImageWriter, OutputOptions

log = logging.getLogger(__name__)

_NOT_LABELS = ("device", "cache_dir", "feature_cache_items", "feature_cache_dir", "autocast_bf16")  # config
# fields that do not change what is computed (autocast is recorded as the run's precision instead)
BYTES_PER_IMAGE = {"labels": 8 << 10, "extra": 64 << 10}  # free space asked for before a run (rough, low)


@dataclass
class LabelSummary:
    """What one process did (``complete``: every image of the list is recorded and the published files exist)."""

    out: str
    total: int  # images in this process's share
    done: int  # labelled now
    skipped: int  # labelled by an earlier run, unchanged
    failed: int  # could not be read, decoded or encoded (reasons in the manifest)
    seconds: float  # wall time of the labelling loop
    images_per_s: float  # images labelled now per second of the loop
    precision: str  # "fp32" or "bf16"
    precision_reason: str  # why (hardware facts, measured speed-up)
    complete: bool
    share: tuple[int, int]  # (index, count) of this process's share
    failures: list[str] = field(default_factory=list)  # the first few reasons

    def line(self) -> str:
        share = f" (share {self.share[0]}/{self.share[1]})" if self.share[1] > 1 else ""
        return (f"labelled {self.done}, skipped {self.skipped}, failed {self.failed} of {self.total}{share} in "
                f"{self.seconds:.1f} s ({self.images_per_s:.1f} images/s, {self.precision})")


# ------------------------------------------------------------------------------------------- digests
def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def _digest(x: Any) -> Any:
    """A short content digest of a user input (a file's bytes, an array's pixels), keeping list structure."""
    if isinstance(x, (list, tuple)):
        return [_digest(v) for v in x]
    if x is None or isinstance(x, (bool, int, float)):
        return x
    if isinstance(x, (str, Path)) and Path(x).is_file():
        return _sha(Path(x).read_bytes())
    if isinstance(x, str):
        return x
    a = load_image(x) if not isinstance(x, np.ndarray) else np.ascontiguousarray(x)
    return _sha(a.tobytes() + repr((a.shape, str(a.dtype))).encode())


def _head_digest(head: Any) -> str | None:
    if head is None:
        return None
    h = hashlib.sha1()
    for k, v in sorted(head.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def run_options(seg: Any, request: Any, inputs: dict[str, Any], precision: str, cfg: LabelConfig) -> dict[str, Any]:
    """What decides the labels (run.json): a rerun with other values is refused unless it overwrites."""
    seg_cfg = {k: v for k, v in dataclasses.asdict(seg.cfg).items() if k not in _NOT_LABELS}
    return {"model": seg.backbone.model_id, "mode": request.mode, "variant": request.variant,
            "segmenter_config": _sha(json.dumps(seg_cfg, sort_keys=True, default=str).encode()),
            "templates": _sha("\n".join(seg.templates).encode()), "head": _head_digest(request.head),
            "classes": request.class_names, "texts": _digest(inputs.get("texts")),
            "supports": _digest(inputs.get("supports")), "negatives": _digest(inputs.get("negatives")),
            "prompt": _digest(inputs.get("prompt")), "precision": precision,
            "overlay": cfg.overlay, "confidence": cfg.confidence}


# ---------------------------------------------------------------------------------------- the run
PROBE_BATCH = 8  # images per call when --precision auto times the encoder both ways


def _encoder_speedup(seg: Any, variant: str, batch: int) -> float:
    """bf16 / fp32 speed of the run's own encoder on a batch of up to ``PROBE_BATCH`` at its input size (a batch
    of 2 understated bf16: per-call costs weigh more there, 1.1-1.35x against 2.6x at the tiny model's batch 32)."""
    side = seg.cfg.input_size or seg.backbone.image_size
    h, w = seg.encoder_size(side, side)
    x = torch.randn(max(1, min(batch, PROBE_BATCH)), 3, h, w, generator=torch.Generator().manual_seed(0))
    x = x.to(seg.backbone.device)

    def run(bf16: bool) -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            seg.backbone.dense(x, variant)

    return measure_speedup(run)


def _choose_precision(out: Path, seg: Any, request: Any, cfg: LabelConfig) -> PrecisionChoice:
    recorded = None if cfg.overwrite else recorded_run(out)
    if cfg.precision == "auto" and recorded and recorded.get("precision") in ("fp32", "bf16"):
        return PrecisionChoice(recorded["precision"], "auto: the choice recorded in run.json by the first pass")
    return resolve_precision(cfg.precision, seg.backbone.device,
                             measure=lambda: _encoder_speedup(seg, request.variant, cfg.batch_size))


@contextlib.contextmanager
def _streaming_cache(seg: Any) -> Iterator[None]:
    """Each image is seen once: no in-memory feature cache during the run (a disk cache is kept)."""
    old = seg.cache
    if old.disk_dir is None and old.max_items:
        seg.cache = FeatureCache(0)
    try:
        yield
    finally:
        seg.cache = old


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="label", disable=not enabled or total == 0, mininterval=0.5,
                dynamic_ncols=True)


def _share(cfg: LabelConfig, ctx: DistContext) -> tuple[int, int]:
    i, n = parse_shard(cfg.shard)
    if cfg.overwrite and n > 1:
        raise InputError("--overwrite with --shard would let each share delete the others' work; empty the output "
                         "folder once (or run one share with --overwrite), then start the shares without it")
    return i * ctx.world + ctx.rank, n * ctx.world


def run_label(source: ImageSource, out: str | Path, seg: Any, inputs: dict[str, Any], cfg: LabelConfig,
              ctx: DistContext) -> LabelSummary:
    """One process's part of a labelling run (see ``label``)."""
    out = Path(out)
    rank, world = _share(cfg, ctx)
    if inputs.get("prompt"):
        names = seg.use_prompt_file(inputs["prompt"])
        inputs = {**inputs, "texts": inputs.get("texts") or names}
    request = seg.prepare(inputs.get("texts"), inputs.get("supports"), inputs.get("negatives"), inputs.get("mode"))
    if len(request.class_names) > MAX_CLASSES:
        raise InputError(f"{len(request.class_names)} classes; label PNGs hold at most {MAX_CLASSES}")
    check_writable_dir(out)
    if ctx.rank == 0:  # under torchrun one process checks and claims the folder, the others follow it
        choice = _choose_precision(out, seg, request, cfg)
        claim_output(out, run_options(seg, request, inputs, choice.name, cfg), cfg.overwrite)
        if world == ctx.world:  # no other share can be writing now: clear what a killed run left half-written
            sweep_temporaries(out)
    barrier(ctx)
    if ctx.rank != 0:
        choice = PrecisionChoice(recorded_run(out)["precision"], "the choice of rank 0")
    refs = read_refs(out)
    items = source.items
    done = {i: r.hash for i, it in enumerate(items) if (r := refs.get(it.path)) is not None and r.status == "done"}
    mine = chunks(len(items), cfg.batch_size, rank, world)
    todo = sum(1 for c in mine for i in c if i not in done)
    per = BYTES_PER_IMAGE["labels"] + BYTES_PER_IMAGE["extra"] * (cfg.overlay + cfg.confidence)
    check_writable_dir(out, need_bytes=(1 << 20) + todo * per)
    journal = Journal(journal_path(out, rank, world))
    writer = ImageWriter(out, request.class_names, OutputOptions(cfg.overlay, cfg.confidence))
    bar = _progress(sum(map(len, mine)), cfg.progress and ctx.rank == 0)
    try:
        with _streaming_cache(seg):
            loop = Loop(seg, request, source, writer, journal, choice.name, cfg.workers, cfg.writers, bar.update)
            stats = loop.run(mine, done)
    finally:
        bar.close()
        journal.close()
    barrier(ctx)
    refs = read_refs(out)
    is_complete = complete(source, refs)
    if is_complete and ctx.rank == 0:
        finalize(out, source, seg, request, cfg, choice.name, refs)
    summary = LabelSummary(str(out), stats.total, stats.done, stats.skipped, stats.failed, round(stats.seconds, 3),
                           round(stats.done / stats.seconds, 3) if stats.seconds > 0 else 0.0, choice.name,
                           choice.reason, is_complete, (rank, world), stats.failures)
    atomic_write_text(out / STATE_DIR / f"summary-{rank}-of-{world}.json",
                      json.dumps(dataclasses.asdict(summary), indent=2) + "\n")
    return summary


def label(sources: Sequence[str | os.PathLike] | ImageSource, out: str | os.PathLike,
          texts: Sequence[str | None] | str | None = None, supports: Any = None, negatives: Any = None, *,
          prompt: str | os.PathLike | None = None, mode: str | None = None, segmenter: Any = None,
          config: LabelConfig | None = None, **options: Any) -> LabelSummary:
    """Label every image of ``sources`` into ``out`` (label PNGs, manifest.jsonl, coco.json, ...).

    sources: folders, globs, list files, ``hf:NAME_OR_DIR[:SPLIT]`` (see ``labeling.sources``). texts / supports /
    negatives / mode: as ``Segmenter.segment``; prompt: a learned prompt file (its classes when no texts).
    segmenter: a built ``Segmenter`` (default: the embedded tiny model). options: ``LabelConfig`` fields
    (``batch_size=16, overlay=True, suggest=10, shard="0/4", precision="fp32", ...``). Under torchrun every
    process calls this with the same arguments. Rerunning resumes; see docs/label.md.
    """
    valid = {f.name for f in dataclasses.fields(LabelConfig)}
    bad = sorted(set(options) - valid)
    if bad:
        raise InputError(f"unknown label option(s) {bad}; valid: {sorted(valid)}")
    cfg = dataclasses.replace(config or LabelConfig(), **options)
    check_label_config(cfg)
    parse_shard(cfg.shard)
    if not isinstance(sources, ImageSource):
        sources = resolve_sources([sources] if isinstance(sources, (str, os.PathLike)) else list(sources),
                                  cfg.image_column, exclude=out)
    if segmenter is None:
        from ..segmenter import build_segmenter

        segmenter = build_segmenter(feature_cache_items=0)
    inputs = {"texts": texts, "supports": supports, "negatives": negatives, "prompt": prompt, "mode": mode}
    ctx = init_distributed(str(segmenter.backbone.device))
    try:
        return run_label(sources, out, segmenter, inputs, cfg, ctx)
    finally:
        cleanup(ctx)
