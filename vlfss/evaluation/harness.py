"""Evaluation harness: zero-shot, K-shot and text+K-shot scored on the same seeded episodes.

``evaluate(segmenter, benchmark, folds, shots, episodes, seeds, modes)`` samples (or reloads) one episode list
per (fold, seed) with the largest K asked, and scores every row on it: for each mode (training-free, learned)
the inputs ``text`` (0 shots), ``examples`` and ``text+examples`` (each K > 0, the first K supports of each
class), plus two trivial baselines: ``all-foreground`` and ``oracle-patch-grid`` (the ground truth pooled to the
encoder's patch grid by area majority and upsampled back: the best any patch-level prediction can do).

Scoring follows the field (see ``metrics``): class-wise mIoU from summed counts, FB-IoU, per-class
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

The parts: ``options`` (what to run), ``plan`` (episodes, resume), ``stats`` / ``calibration`` (the sums),
``provenance`` (what a row records), ``results`` / ``report`` (rows, table, plots), ``runner`` (by name).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .. import errors
from ..data.benchmark import Benchmark
from ..data.episodes import Episode, load_episode, shard
from ..data.perturb import Perturbation, apply_episode, parse_perturbations
from ..engine.distributed import DistContext, all_reduce_sum, broadcast_object, current_context
from ..errors import InputError, ModelError, VlfssError
from ..modeling.functional import normalised_entropy
from .metrics import IGNORE
from .options import BASELINE, CLEAN, RESULTS_FILE, EvalOptions, check_int_list, normalise_modes
from .plan import Group, RowSpec, episode_lists, plan_groups, previous_rows, row_plan
from .provenance import config_hash, module_digest, package_versions
from .report import append_jsonl, write_report
from .results import EvalResults, ResultRow
from .stats import RowStats, patch_grid_oracle, resize_labels, resize_probs

logger = logging.getLogger(__name__)

BenchmarkLike = Benchmark | Callable[[int], Benchmark]


@dataclass
class _Run:
    """One ``evaluate`` call after its arguments were checked."""

    segmenter: Any  # the Segmenter scored (its head is swapped per fold during the run)
    bench_of: Callable[[int], Benchmark]  # fold -> benchmark
    folds: list[int]  # folds to score
    plan_folds: list[int] | None  # folds to plan: None lets the episode files decide
    shots: list[int]  # K values, sorted
    seeds: list[int]  # episode seeds
    episodes: int  # episodes per fold and seed
    modes: list[str]  # training-free and/or learned
    opts: EvalOptions  # the rest
    heads: dict[int, Any]  # fold -> learned head (folds without one use default_head)
    default_head: Any  # the segmenter's own head, restored after the run
    plan_rows: list[RowSpec]  # the table's rows
    chash: str  # config hash
    digests: dict[int, str | None]  # fold -> head weight digest (learned runs)
    ctx: DistContext  # this process's rank and world
    perturbs: dict[str, Perturbation]  # name -> corruption scored besides the clean images

    def head_of(self, fold: int) -> Any:
        return self.heads.get(fold, self.default_head)

    @property
    def out_dir(self) -> Path | None:
        return Path(self.opts.out_dir) if self.opts.out_dir else None

    @property
    def results_path(self) -> Path | None:
        return self.out_dir / RESULTS_FILE if self.out_dir else None


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
    run = _prepare(segmenter, benchmark, folds, shots, episodes, seeds, modes, options, fold_heads, overrides)
    groups, old_rows = _shared_plan(run)
    distinct, variants = _size_cache(run, groups)
    cache0 = (segmenter.cache.hits, segmenter.cache.misses, segmenter.image_encodes,
              getattr(segmenter, "degraded_encodes", 0), getattr(segmenter, "restored_encodes", 0))
    new_rows = _score_groups(run, groups)
    cache = _cache_stats(segmenter, cache0, distinct, variants, run.ctx)
    order = {k: i for i, k in enumerate(run.plan_rows)}
    porder = {p: i for i, p in enumerate((CLEAN, *run.perturbs))}
    rows = sorted(old_rows + new_rows,
                  key=lambda r: (porder.get(r.get("perturb", CLEAN), 0), r["seed"], r["fold"],
                                 order.get((r["mode"], r["input"], r["shots"]), 0)))
    files = _write_outputs(run, rows, groups, cache)
    logger.info("feature cache: %s", cache)
    return EvalResults(rows=rows, cache=cache, files=files)


def _prepare(segmenter: Any, benchmark: BenchmarkLike, folds: Sequence[int] | None, shots: Sequence[int],
             episodes: int, seeds: Sequence[int], modes: Sequence[str] | str, options: EvalOptions | None,
             fold_heads: dict[int, Any] | None, overrides: dict[str, Any]) -> _Run:
    """Check every argument (InputError / ModelError naming it) and fix what the run is."""
    try:
        opts = dataclasses.replace(options or EvalOptions(), **overrides)
    except TypeError as e:
        raise InputError(f"unknown evaluate option: {e}") from None
    bench_of = _bench_factory(benchmark)
    folds_l = None if folds is None else check_int_list("folds", folds, 0)
    bench0 = bench_of(folds_l[0] if folds_l else 0)
    all_folds = list(range(bench0.num_folds)) if folds_l is None else folds_l
    for f in all_folds:
        if f >= bench0.num_folds:
            raise InputError(f"{bench0.name}: fold must be 0..{bench0.num_folds - 1} or 'all', got {f}")
    shots_l = sorted(check_int_list("shots", shots, 0))
    seeds_l = check_int_list("seeds", seeds, 0)
    modes_l = normalise_modes(modes)
    _check_counts(episodes, opts)
    if isinstance(opts.adapt_steps, bool) or not isinstance(opts.adapt_steps, int) or opts.adapt_steps < 0:
        raise InputError(f"adapt_steps must be an integer >= 0, got {opts.adapt_steps!r}")
    perturbs = {p.name: p for p in parse_perturbations(opts.perturb)}
    heads, default_head = dict(fold_heads or {}), segmenter.head
    if "learned" in modes_l and any(heads.get(f, default_head) is None for f in all_folds):
        raise ModelError("learned mode needs a trained head: pass --head FILE (from `vlfss train`) or use "
                         "--mode training-free")
    has_text = bool(segmenter.backbone.has_text)
    if not has_text:
        logger.warning("model %s has no text encoder: text rows are skipped", segmenter.backbone.model_id)
    # weights, not the file name, identify a head; one per fold
    digests = ({f: module_digest(heads.get(f, default_head)) for f in range(bench0.num_folds)
                if heads.get(f, default_head) is not None} if "learned" in modes_l else {})
    return _Run(segmenter, bench_of, all_folds, all_folds if folds is not None or not opts.episode_files else None,
                shots_l, seeds_l, episodes, modes_l, opts, heads, default_head,
                row_plan(modes_l, shots_l, opts.baselines, has_text),
                config_hash(segmenter, bench0.name, bench0.split, opts), digests, current_context(), perturbs)


def _check_counts(episodes: int, opts: EvalOptions) -> None:
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise InputError(f"episodes must be a positive integer, got {episodes!r}")
    if not 0 < opts.ece_bins <= 1000:
        raise InputError(f"ece_bins must be 1..1000, got {opts.ece_bins}")
    for x in opts.reject:
        if not 0.0 <= x < 1.0:
            raise InputError(f"rejection fractions must be in [0, 1), got {x}")


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


def _plan(run: _Run) -> tuple[list[Group], list[dict[str, Any]]]:
    """Episode lists per (fold, seed) and the rows each still needs; writes episode files; reads old rows."""
    old_rows = previous_rows(run.results_path, run.opts, run.chash, run.digests)
    lists = episode_lists(run.bench_of, run.plan_folds, max(run.shots), run.episodes, run.seeds, run.opts,
                          run.out_dir)
    groups, old_rows = plan_groups(lists, run.plan_rows, old_rows, run.chash, run.digests, list(run.perturbs))
    skipped = sum(len(run.plan_rows) - len(g.todo) for g in groups)
    if skipped:
        logger.info("resuming: %d of %d rows already in %s", skipped, len(run.plan_rows) * len(groups),
                    run.results_path)
    return groups, old_rows


def _shared_plan(run: _Run) -> tuple[list[Group], list[dict[str, Any]]]:
    """``_plan`` on rank 0 (episodes sampled or loaded, files written, resume decided), broadcast to all ranks;
    a failure on rank 0 is raised on every rank (as the same project error where it is one)."""
    plan: Any = None
    failure: Exception | None = None
    if run.ctx.rank == 0:
        try:
            plan = ("ok", _plan(run))
        except Exception as e:  # every rank must leave the broadcast below, then fail alike
            if run.ctx.world == 1:
                raise
            plan, failure = ("error", type(e).__name__, str(e)), e
    plan = broadcast_object(plan, run.ctx)
    if plan[0] == "error":
        if failure is not None:
            raise failure
        err = getattr(errors, plan[1], None)
        raise (err if isinstance(err, type) and issubclass(err, VlfssError) else RuntimeError)(plan[2])
    return plan[1]


def _size_cache(run: _Run, groups: list[Group]) -> tuple[int, list[str]]:
    """Grow the feature cache to hold every distinct image of the run once per dense variant (unless capped by
    ``cache_items``); returns (distinct images, variants)."""
    seg = run.segmenter
    variants = sorted({seg.variant if m == "training-free" else seg.head_variant for m in run.modes})
    distinct = {(id(run.bench_of(g.fold).dataset), i) for g in groups for s in g.specs
                for i in (s.query_id, *s.support_ids)}
    want = run.opts.cache_items if run.opts.cache_items is not None else len(distinct) * len(variants) + 16
    if seg.cache.max_items < want:
        seg.cache.max_items = want
    return len(distinct), variants


def _score_groups(run: _Run, groups: list[Group]) -> list[dict[str, Any]]:
    """Score this rank's shard of every group, all-reduce, and return (rank 0: also append) the new rows."""
    rank, world = run.ctx.rank, run.ctx.world
    total = sum(len(shard(len(g.specs), rank, world)) for g in groups if g.todo)
    bar = tqdm(total=total, desc="eval", unit="ep", disable=not run.opts.progress or rank != 0 or total == 0,
               dynamic_ncols=True)
    versions = package_versions()
    new_rows: list[dict[str, Any]] = []
    try:
        for g in groups:
            if not g.todo:
                continue
            bench = run.bench_of(g.fold)
            bar.set_postfix_str(f"fold {g.fold} seed {g.seed}" + ("" if g.perturb == CLEAN else f" {g.perturb}"))
            run.segmenter.head = run.head_of(g.fold)
            stats = run_group(run.segmenter, bench, g, run.opts, rank, world, bar, run.perturbs.get(g.perturb))
            novel = bench.novel_classes(g.fold)
            for key in g.todo:
                metrics = stats[key].all_reduce().metrics(bench.class_names, novel)
                row = _row(run, bench, g, key, metrics, versions)
                new_rows.append(row)
                if rank == 0 and run.results_path is not None:
                    append_jsonl(run.results_path, row)
    finally:
        bar.close()
        run.segmenter.head = run.default_head
    return new_rows


def _row(run: _Run, bench: Benchmark, g: Group, key: RowSpec, metrics: dict[str, Any],
         versions: dict[str, str]) -> dict[str, Any]:
    mode, inp, k = key
    seg = run.segmenter
    return ResultRow(
        benchmark=bench.name, split=bench.split, fold=g.fold, seed=g.seed, mode=mode, input=inp, shots=k,
        n_way=run.opts.n_way, resolution="resized" if run.opts.resized_labels else "original", metrics=metrics,
        episode_hash=g.episode_hash, episodes_file=g.episodes_file, config_hash=run.chash,
        model=seg.backbone.model_id, head=run.digests.get(g.fold) if mode == "learned" else None,
        variant=seg.head_variant if mode == "learned" else seg.variant,
        command=run.opts.command or "python API", versions=versions, perturb=g.perturb,
        adapt_steps=run.opts.adapt_steps if mode == "learned" and k > 0 else 0, inference=seg.cfg.inference).to_json()


def _write_outputs(run: _Run, rows: list[dict[str, Any]], groups: list[Group],
                   cache: dict[str, Any]) -> dict[str, str]:
    """Rank 0 with an output folder: table, summary, plots; returns name -> path (with the episode files)."""
    if run.ctx.rank != 0 or run.out_dir is None:
        return {}
    files = write_report(rows, run.out_dir, plots=run.opts.plots, cache=cache)
    files["results"] = str(run.results_path)
    for g in groups:
        if g.episodes_file:
            files[f"episodes_fold{g.fold}_seed{g.seed}"] = g.episodes_file
    return files


def run_group(segmenter: Any, bench: Benchmark, g: Group, opts: EvalOptions, rank: int, world: int,
              bar: Any, perturb: Perturbation | None = None) -> dict[RowSpec, RowStats]:
    """This rank's shard of one (fold, seed): every row's sums (with ``perturb`` applied to every image)."""
    stats = {key: RowStats(bench.dataset.num_classes, opts.reject, opts.ece_bins) for key in g.todo}
    variants = sorted({segmenter.variant if m == "training-free" else segmenter.head_variant
                       for m, _, _ in g.todo if m != BASELINE})
    for i in shard(len(g.specs), rank, world):
        ep = load_episode(bench.dataset, g.specs[i])
        if perturb is not None:
            ep = apply_episode(perturb, ep)
        for img in (ep.query_image, *ep.support_images):
            for v in variants:  # one image per call: features do not depend on batching (or on the shard)
                segmenter.encode([img], v)
        target = torch.from_numpy(ep.query_mask).long()
        enc_size = segmenter.encoder_size(*target.shape)
        if opts.resized_labels:
            target = resize_labels(target, enc_size)
        grid = (enc_size[0] // segmenter.backbone.patch_size, enc_size[1] // segmenter.backbone.patch_size)
        for (mode, inp, k), st in stats.items():
            if mode == BASELINE:
                score_baseline(st, inp, target, grid, ep.class_ids, ep.index)
            else:
                _score_model(st, segmenter, ep, mode, inp, k, target, opts.resized_labels,
                             opts.adapt_steps if mode == "learned" and k > 0 else 0)
        bar.update(1)
    return stats


def episode_request(ep: Episode, inp: str, k: int) -> dict[str, Any]:
    """``texts`` / ``supports`` of ``Segmenter.segment`` for one row's input: the episode's texts, and/or the
    first ``k`` supports of each class."""
    texts = ep.texts if inp in ("text", "text+examples") else None
    supports = None
    if inp in ("examples", "text+examples"):
        supports = [[(ep.support_images[j * ep.k_shot + s], ep.support_masks[j * ep.k_shot + s])
                     for s in range(k)] for j in range(ep.n_way)]
    return {"texts": texts, "supports": supports}


def _score_model(st: RowStats, segmenter: Any, ep: Episode, mode: str, inp: str, k: int, target: Tensor,
                 resized_labels: bool, adapt_steps: int = 0) -> None:
    extra = {"adapt_steps": adapt_steps} if adapt_steps else {}
    out = segmenter.segment(ep.query_image, **episode_request(ep, inp, k), mode=mode, **extra)
    probs = out.probs
    if resized_labels:
        probs = resize_probs(probs, tuple(target.shape))
    conf, pred = probs.max(0)
    ent = normalised_entropy(probs.unsqueeze(0))[0]
    st.update(pred, target, ep.class_ids, ep.index, conf, ent)


def score_baseline(st: RowStats, kind: str, target: Tensor, grid: tuple[int, int], class_ids: list[int],
                   episode: int) -> None:
    """Add one episode of a baseline row: the patch-grid oracle, or all-foreground (each class predicted over
    the whole image, scored as its own binary episode)."""
    n = len(class_ids)
    if kind == "oracle-patch-grid":
        st.update(patch_grid_oracle(target, grid, n + 1), target, class_ids, episode)
        return
    for j, c in enumerate(class_ids):
        binary = torch.where(target == IGNORE, target, (target == j + 1).long())
        st.update(torch.ones_like(target), binary, [c], episode)


def _cache_stats(segmenter: Any, start: tuple[int, ...], distinct: int, variants: list[str],
                 ctx: DistContext) -> dict[str, Any]:
    """Feature-cache hits, misses and encodes of this run, summed over ranks."""
    c = torch.tensor([segmenter.cache.hits - start[0], segmenter.cache.misses - start[1],
                      segmenter.image_encodes - start[2], getattr(segmenter, "degraded_encodes", 0) - start[3],
                      getattr(segmenter, "restored_encodes", 0) - start[4]], dtype=torch.int64)
    hits, misses, enc, degraded, restored = (int(x) for x in all_reduce_sum(c, ctx))
    return {"hits": hits, "misses": misses, "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
            "image_encodes": enc, "degraded_encodes": degraded, "restored_encodes": restored,
            "distinct_images": distinct, "variants": variants}
