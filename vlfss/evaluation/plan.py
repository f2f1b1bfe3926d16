"""What an evaluation run still has to compute: the table's rows, the episode list of every (fold, seed), and
which rows an earlier, interrupted run in the same folder already wrote (``--resume``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.benchmark import Benchmark
from ..data.episodes import EpisodeSampler, EpisodeSpec
from ..errors import InputError
from .options import BASELINE, BASELINES, CLEAN, EvalOptions
from .provenance import EpisodeList, episode_meta, hash_specs, load_episode_files
from .report import read_jsonl, rewrite_jsonl
from .results import row_key

logger = logging.getLogger(__name__)

RowSpec = tuple[str, str, int]  # (mode, input, shots)


def row_plan(modes: Sequence[str], shots: Sequence[int], baselines: bool, has_text: bool = True) -> list[RowSpec]:
    """(mode, input, shots) of every row, in table order."""
    out: list[RowSpec] = []
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


@dataclass
class Group:
    """One (fold, seed): its episodes and the rows still to compute."""

    fold: int  # fold whose novel classes are scored
    seed: int  # episode seed
    specs: list[EpisodeSpec]  # the episodes every row of the group is scored on
    episode_hash: str  # content hash of the episode list
    episodes_file: str | None  # where the list was saved / read (None when nothing is written)
    todo: list[RowSpec]  # rows not yet in the results file
    perturb: str = CLEAN  # the corruption applied to the episodes' images ("clean": none)


def previous_rows(results_path: Path | None, opts: EvalOptions, chash: str,
                  digests: dict[int, str | None]) -> list[dict[str, Any]]:
    """Rows an earlier run left in ``results_path`` that this run may keep (with ``resume``); with ``overwrite``
    the file is removed; otherwise an existing file is an error (results are never silently mixed)."""
    if results_path is None or not results_path.exists():
        return []
    rows, torn = read_jsonl(results_path)
    if opts.resume:
        if {r.get("config_hash") for r in rows} - {chash}:
            raise InputError(f"{results_path} holds rows of another configuration (model or options "
                             f"differ); use another --out, or --overwrite to replace them")
        if any(r.get("head") != digests.get(r.get("fold")) for r in rows
               if r.get("mode") == "learned" and r.get("fold") in digests):
            raise InputError(f"{results_path} holds learned rows of another head; use another --out, or "
                             "--overwrite to replace them")
        if torn:
            logger.warning("%s ends with an incomplete row (interrupted write); dropping it", results_path)
            rewrite_jsonl(results_path, rows)
        return rows
    if opts.overwrite:
        results_path.unlink()
    elif rows or torn:
        raise InputError(f"{results_path} already holds results; pass --resume to continue that run, "
                         "--overwrite to replace it, or choose another --out")
    return []


def episode_lists(bench_of: Callable[[int], Benchmark], folds: list[int] | None, kmax: int, episodes: int,
                  seeds: Sequence[int], opts: EvalOptions, out_dir: Path | None) -> list[EpisodeList]:
    """One episode list per (fold, seed): loaded from ``opts.episode_files``, or sampled with ``kmax`` shots and
    saved under ``out_dir/episodes`` (hashed either way)."""
    if opts.episode_files:
        return load_episode_files(opts.episode_files, bench_of, opts, folds, kmax)
    lists: list[EpisodeList] = []
    for seed in seeds:
        for fold in folds or []:
            bench = bench_of(fold)
            specs = EpisodeSampler(bench.dataset, bench.novel_classes(fold), opts.n_way, kmax, seed, episodes,
                                   opts.query_sampling).specs()
            path = None
            if out_dir is not None:
                ways = f"-{opts.n_way}way" if opts.n_way > 1 else ""
                name = f"{bench.name}-{bench.split}-fold{fold}-seed{seed}-{episodes}ep-{kmax}shot{ways}.json"
                path = out_dir / "episodes" / name
            h, saved = hash_specs(specs, episode_meta(bench, fold, seed, opts, episodes), path)
            lists.append((fold, seed, specs, h, saved))
    return lists


def plan_groups(lists: list[EpisodeList], plan_rows: list[RowSpec], old_rows: list[dict[str, Any]], chash: str,
                digests: dict[int, str | None], perturbs: Sequence[str] = ()
                ) -> tuple[list[Group], list[dict[str, Any]]]:
    """The groups with the rows each still needs, and the old rows that belong to this run's table.

    Each (fold, seed) gives one clean group and one group per perturbation (same episodes, model rows only: the
    baselines do not look at the image)."""

    def key(h: str, fold: int, seed: int, row: RowSpec, p: str) -> tuple:
        return (chash, digests.get(fold) if row[0] == "learned" else None, h, fold, seed, *row, p)

    model_rows = [k for k in plan_rows if k[0] != BASELINE]
    done = {row_key(r) for r in old_rows}
    groups = [Group(fold, seed, specs, h, saved,
                    [k for k in (plan_rows if p == CLEAN else model_rows) if key(h, fold, seed, k, p) not in done], p)
              for p in (CLEAN, *perturbs) for fold, seed, specs, h, saved in lists]
    keep = {key(g.episode_hash, g.fold, g.seed, k, g.perturb) for g in groups
            for k in (plan_rows if g.perturb == CLEAN else model_rows)}
    return groups, [r for r in old_rows if row_key(r) in keep]
