"""`vlfss eval`: score zero-shot vs few-shot on a benchmark (a thin layer over ``evaluation.runner``).

The segmenter options are the shared ones (``common.add_segmenter_args``, defaults from ``SegmenterConfig``, so
``eval`` builds the same segmenter as ``segment``); two of them mean more here: ``--mode`` also takes ``both``
(the rows to score) and ``--head`` may hold ``{fold}`` (one head file per fold).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any, NoReturn

import yaml

from ..data.perturb import parse_perturbations
from ..errors import InputError
from ..evaluation.options import DEFAULT_REJECT, EvalJob, EvalOptions, normalise_modes
from .common import add_segmenter_args, segmenter_config

HELP = "(see `vlfss eval --help`)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score zero-shot vs few-shot on a benchmark", conflict_handler="resolve",
                       description="Score zero-shot vs few-shot on the same episodes.")
    add_eval_args(p)
    p.error = _exit_one_line  # type: ignore[method-assign]  # a usage error is one line, exit 2
    p.set_defaults(func=run)


def _exit_one_line(message: str) -> NoReturn:
    print(f"vlfss: error: {message} {HELP}", file=sys.stderr)
    raise SystemExit(2)


class _RaisingParser(argparse.ArgumentParser):
    """The standalone parser of ``parse_job``: a usage error is an InputError (one line for the caller)."""

    def error(self, message: str) -> NoReturn:
        raise InputError(f"{message} {HELP}")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """The options of `vlfss eval` (``p`` needs conflict_handler="resolve": --mode and --head are redefined)."""
    p.add_argument("--benchmark", required=True, help="pascal5i, coco20i, fss1000, synthetic, folder, hf")
    p.add_argument("--data-root", default=None, help="dataset folder (synthetic: cache root, default the cache)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--fold", nargs="+", default=None, help="fold numbers or 'all' (default all)")
    p.add_argument("--shots", nargs="+", type=int, default=[0, 1, 5], help="K values; 0 = text only")
    p.add_argument("--episodes", type=int, default=1000, help="episodes per fold and seed")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="episode seeds")
    p.add_argument("--ways", type=int, default=1, help="classes per episode")
    p.add_argument("--query-sampling", default="class", choices=["class", "pair"])
    p.add_argument("--split-convention", default=None, help="coco20i folds: interleaved (default) or consecutive")
    p.add_argument("--bench-opt", nargs="*", default=[], metavar="KEY=VALUE",
                   help="benchmark reader options, e.g. n_images=500 image_size=96 for synthetic")
    p.add_argument("--episodes-file", nargs="+", default=None,
                   help="saved episode lists to reuse (their folds, seeds and episode counts are used)")
    p.add_argument("--resized-labels", action="store_true",
                   help="score at the encoder input size (labels nearest-resized) instead of the label size")
    p.add_argument("--reject", nargs="+", type=float, default=list(DEFAULT_REJECT),
                   help="fractions of least confident pixels rejected for the risk-coverage curve")
    p.add_argument("--ece-bins", type=int, default=EvalOptions.ece_bins)
    p.add_argument("--perturb", nargs="+", default=[], metavar="SPEC",
                   help="also score every model row with query and supports corrupted: jpeg:Q (1..95), blur:SIGMA "
                   "(> 0), noise:SIGMA (0..255), scale:F (0.1..4), gray; the table adds the drop from clean")
    p.add_argument("--adapt-steps", type=int, default=EvalOptions.adapt_steps,
                   help="learned rows with supports: test-time adaptation steps on the supports (validated on them "
                   "unless --set adapt_validate=false; 1 support per class declines)")
    p.add_argument("--no-baselines", action="store_true", help="skip the all-foreground and oracle rows")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", default="vlfss_eval", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue a run: skip rows already in --out")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.add_argument("--cache-items", type=int, default=None, help="in-memory feature cache size")
    add_segmenter_args(p)
    p.add_argument("--mode", default="training-free", help="rows to score: training-free, learned or both")
    p.add_argument("--head", default=None, help="learned head weights (safetensors); a path with {fold} names one "
                   "head per fold (fold i's head trained without fold i's classes)")
    p.add_argument("--feature-cache-dir", default=None, help="on-disk feature cache")


def _parser(cls: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = cls(prog="vlfss eval", conflict_handler="resolve", description="Score zero-shot vs few-shot.")
    add_eval_args(p)
    return p


def parse_job(argv: list[str]) -> EvalJob:
    """`vlfss eval` arguments -> EvalJob (InputError on bad input); for scripts that run the protocol in-process."""
    args = _parser(_RaisingParser).parse_args(list(argv))
    return job_from_args(args, "vlfss eval " + shlex.join(list(argv)))


def job_from_args(args: argparse.Namespace, command: str) -> EvalJob:
    """The EvalJob the parsed options describe; ``command`` is recorded in every result row."""
    bench_options = _key_values(args.bench_opt)
    if args.split_convention is not None:
        if args.benchmark.lower() != "coco20i":
            raise InputError("--split-convention applies to coco20i only")
        bench_options["convention"] = args.split_convention
    head_template = args.head if args.head is not None and "{fold}" in args.head else None
    cache_dir = [f"feature_cache_dir={args.feature_cache_dir}"] if args.feature_cache_dir is not None else []
    seg = segmenter_config(argparse.Namespace(**{
        **vars(args), "mode": "auto",  # the runner picks the segmenter's mode from the rows asked
        "head": None if head_template else args.head, "set": cache_dir + list(args.set or [])}))
    options = EvalOptions(
        n_way=args.ways, query_sampling=args.query_sampling, resized_labels=args.resized_labels,
        reject=tuple(args.reject), ece_bins=args.ece_bins, baselines=not args.no_baselines,
        episode_files=args.episodes_file, out_dir=args.out, resume=args.resume, overwrite=args.overwrite,
        plots=not args.no_plots, progress=not args.quiet, command=command, cache_items=args.cache_items,
        adapt_steps=args.adapt_steps, perturb=tuple(p.name for p in parse_perturbations(args.perturb)))
    return EvalJob(benchmark=args.benchmark, data_root=args.data_root, split=args.split, folds=_folds(args.fold),
                   shots=args.shots, episodes=args.episodes, seeds=args.seeds, modes=normalise_modes(args.mode),
                   bench_options=bench_options, segmenter=seg, head_template=head_template, options=options)


def _folds(values: list[str] | None) -> list[int] | None:
    if values is None or [f.lower() for f in values] == ["all"]:
        return None
    try:
        return [int(f) for f in values]
    except ValueError:
        raise InputError(f"--fold takes fold numbers or 'all', got {' '.join(values)}") from None


def _key_values(items: list[str]) -> dict[str, Any]:
    """--bench-opt KEY=VALUE ... -> dict (values read as YAML scalars: 500 is an int, true a bool)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--bench-opt {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v else ""
    return out


def command_line(args: argparse.Namespace) -> str:
    """`vlfss eval` with every option that differs from its default, in the parser's order (recorded in rows)."""
    defaults = vars(_parser().parse_args(["--benchmark", args.benchmark]))
    words = ["vlfss", "eval"]
    for dest, default in defaults.items():
        value = getattr(args, dest)
        if value == default and dest != "benchmark":
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.runner import run_evaluation  # the library (torch) loads when the command runs

    res = run_evaluation(job_from_args(args, command_line(args)))
    if int(os.environ.get("RANK", "0")) == 0 and not args.quiet:  # torchrun: rank 0 reports
        print(res.table())
        c = res.cache
        print(f"feature cache: {c['hits']} hits, {c['misses']} misses (hit rate {100 * c['hit_rate']:.1f}%); "
              f"{c['image_encodes']} image encodes for {c['distinct_images']} distinct images x "
              f"{len(c['variants'])} dense variant(s) ({', '.join(c['variants'])})"
              + degraded_line(c))
        for k, v in sorted(res.files.items()):
            if not k.startswith("episodes_"):
                print(f"{k}: {v}")
    return 0


def degraded_line(c: dict) -> str:
    """What the quality gate did, for the feature-cache line ("" when it flagged nothing)."""
    robust, restored = c.get("degraded_encodes", 0), c.get("restored_encodes", 0)
    if not robust:
        return ""
    return (f"; {robust} looked degraded and went to the robust tower"
            + (f", {restored} of them restored first (deblurred or smoothed)" if restored else ""))
