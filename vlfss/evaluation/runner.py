"""Run an evaluation described by name (``EvalJob``): check the data, build the segmenter and the per-fold heads,
join torchrun's process group if there is one, and call ``evaluate``. ``vlfss eval`` is a thin layer over this."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..data import build_benchmark
from ..data.benchmark import Benchmark
from ..engine.distributed import cleanup, init_distributed
from ..errors import InputError, ModelError
from ..io_utils import check_writable_dir
from ..modeling.config import SegmenterConfig
from ..modeling.head_file import load_head
from ..segmenter import Segmenter
from .harness import BenchmarkLike, evaluate
from .options import EvalJob, normalise_modes
from .results import EvalResults

CONVENTIONS = ("interleaved", "consecutive")  # COCO-20i fold conventions


def run_evaluation(job: EvalJob, segmenter: Segmenter | None = None) -> EvalResults:
    """Check the data, build the segmenter (unless given), initialise torchrun if present, evaluate."""
    job = complete_job(job)
    if job.options.out_dir:
        check_writable_dir(Path(job.options.out_dir))

    def bench_of(fold: int) -> Benchmark:
        return build_benchmark(job.benchmark, job.data_root, job.split, fold, **job.bench_options)

    first = bench_of(job.folds[0] if job.folds else 0)  # data errors before the model loads
    for f in job.folds or []:
        if not 0 <= f < first.num_folds:
            raise InputError(f"{first.name}: fold must be 0..{first.num_folds - 1} or 'all', got {f}")
    factory: BenchmarkLike = bench_of if job.benchmark == "pascal5i" else first
    head_files = fold_head_files(job.head_template, job.folds if job.folds is not None else range(first.num_folds))
    if segmenter is None:
        segmenter = Segmenter.from_config(segmenter_config(job, head_files))
    fold_heads = load_fold_heads(segmenter, head_files)
    ctx = init_distributed(str(segmenter.backbone.device))
    try:
        return evaluate(segmenter, factory, job.folds, job.shots, job.episodes, job.seeds, job.modes, job.options,
                        fold_heads=fold_heads)
    finally:
        cleanup(ctx)


def complete_job(job: EvalJob) -> EvalJob:
    """The job with its names normalised and its reader options completed (COCO-20i's convention)."""
    name = job.benchmark.lower()
    bench_options, meta = dict(job.bench_options), dict(job.options.benchmark_meta)
    if name == "coco20i":
        conv = bench_options.setdefault("convention", "interleaved")
        if conv not in CONVENTIONS:
            raise InputError(f"--split-convention must be interleaved or consecutive, got {conv!r}")
        meta["convention"] = conv
    head = job.segmenter.head_path
    if head is not None and job.head_template is None and not Path(head).is_file():
        raise ModelError(f"head weights {head} do not exist; train one with `vlfss train` or drop --head")
    options = dataclasses.replace(job.options, benchmark_meta=meta)
    return dataclasses.replace(job, benchmark=name, bench_options=bench_options, modes=normalise_modes(job.modes),
                               options=options)


def segmenter_config(job: EvalJob, head_files: dict[int, Path]) -> SegmenterConfig:
    """The job's segmenter config: learned mode when a learned row is asked (the head loads), else
    training-free; the first fold's head when there is one per fold; one GPU per torchrun rank."""
    cfg = dataclasses.replace(job.segmenter, mode="learned" if "learned" in job.modes else "training-free")
    if head_files:
        cfg = dataclasses.replace(cfg, head_path=str(next(iter(head_files.values()))))
    if cfg.device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cfg = dataclasses.replace(cfg, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return cfg


def fold_head_files(template: str | None, folds: Any) -> dict[int, Path]:
    """fold -> head file of a ``{fold}`` path template (ModelError naming every missing file)."""
    if template is None:
        return {}
    files = {f: Path(template.replace("{fold}", str(f))) for f in folds}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ModelError(f"--head {template}: no head file {', '.join(missing)}; train the fold's head "
                         "(`vlfss train --config ...foldN.yaml`, or eval/train_heads.py) or name existing files")
    return files


def load_fold_heads(segmenter: Segmenter, files: dict[int, Path]) -> dict[int, Any]:
    """One learned head per fold; all must share the dense variant the segmenter's head uses."""
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
        segmenter.pair_head(head, path)
        heads[fold] = head
    return heads
