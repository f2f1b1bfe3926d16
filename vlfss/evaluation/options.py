"""What an evaluation run is asked to do, as typed options (torch-free, so the CLI can build them cheaply).

``EvalOptions`` is how ``evaluate`` samples, scores and writes; ``EvalJob`` is a whole run described by names
(benchmark, segmenter config, folds, shots, ...) for ``runner.run_evaluation``, which builds the parts.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..modeling.config import SegmenterConfig

MODES = ("training-free", "learned")
INPUTS = ("text", "examples", "text+examples")
BASELINE = "baseline"
BASELINES = ("all-foreground", "oracle-patch-grid")
DEFAULT_REJECT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
RESULTS_FILE = "results.jsonl"
CLEAN = "clean"  # the perturbation name of rows scored on the images as they are


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
    adapt_steps: int = 0  # learned rows with supports: test-time adaptation steps (validated per SegmenterConfig)
    perturb: tuple[str, ...] = ()  # corruptions (jpeg:Q blur:S noise:S scale:F gray), each scored on the same episodes


@dataclass
class EvalJob:
    """A whole evaluation run by name: what to build (benchmark, segmenter, heads) and what to score."""

    benchmark: str  # benchmark name (see vlfss.data.list_benchmarks)
    data_root: str | None = None  # dataset folder (synthetic: cache root; None = default cache)
    split: str = "test"  # dataset split to score
    folds: list[int] | None = None  # None: all folds (or the folds of options.episode_files)
    shots: list[int] = field(default_factory=lambda: [0, 1, 5])  # K values; 0 means text only
    episodes: int = 1000  # episodes per fold and seed
    seeds: list[int] = field(default_factory=lambda: [0])  # episode seeds
    modes: list[str] = field(default_factory=lambda: ["training-free"])  # training-free and/or learned
    bench_options: dict[str, Any] = field(default_factory=dict)  # reader options (e.g. convention for coco20i)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)  # the model (mode is set from ``modes``)
    head_template: str | None = None  # a head path with "{fold}": one head file per fold (overrides head_path)
    options: EvalOptions = field(default_factory=EvalOptions)  # sampling, scoring and outputs


def check_int_list(name: str, values: Sequence[int], lo: int) -> list[int]:
    """``values`` as distinct ints >= ``lo`` (InputError naming ``name`` otherwise)."""
    vals = list(values)
    if not vals:
        raise InputError(f"{name} is empty")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
            raise InputError(f"{name} must be integers >= {lo}, got {v!r}")
    if len(set(vals)) != len(vals):
        raise InputError(f"{name} has duplicates: {vals}")
    return [int(v) for v in vals]


def normalise_modes(modes: Sequence[str] | str) -> list[str]:
    """"training-free", "learned", "both" or a list of them -> the modes in table order, each once."""
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
