"""What a result row records about how it was made: package versions, weight digests, a config hash, and the
episode lists (saved, hashed, and reloaded with checks that they belong to this benchmark and fold)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..data.benchmark import Benchmark
from ..data.episodes import EpisodeSpec, load_episodes, save_episodes
from ..errors import DataError
from .options import EvalOptions

EpisodeList = tuple[int, int, list[EpisodeSpec], str, str | None]  # (fold, seed, specs, hash, saved path)


def package_versions() -> dict[str, str]:
    """Versions of python and the packages that decide the numbers."""
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


# SegmenterConfig fields left out of the config hash: where and how the run happens, or recorded otherwise (the
# model id names the weights, variant and templates enter resolved, a learned row carries its head's digest)
NOT_HASHED = ("model", "pretrained", "cache_dir", "device", "mode", "head_path", "variant", "templates",
              "feature_cache_items", "feature_cache_dir")


def config_hash(segmenter: Any, bench_name: str, split: str, opts: EvalOptions) -> str:
    """Hash of everything that decides a row's numbers besides its episodes and the head (kept per row): the
    model, the resolved variants and templates, every other SegmenterConfig field (input size, inference strategy,
    refinement, bf16, training-free settings, ...) and the scoring options."""
    cfg = {k: v for k, v in dataclasses.asdict(segmenter.cfg).items() if k not in NOT_HASHED}
    blob = {
        "model": segmenter.backbone.model_id, "variant": segmenter.variant, "head_variant": segmenter.head_variant,
        "templates": list(getattr(segmenter, "templates", [])), "segmenter": cfg,
        "prompts": sorted(segmenter.prompt_learners),
        "benchmark": bench_name, "split": split, "n_way": opts.n_way, "resized_labels": opts.resized_labels,
        "reject": list(opts.reject), "ece_bins": opts.ece_bins, "meta": opts.benchmark_meta,
    }
    if opts.adapt_steps:  # only when used, so runs without adaptation keep their hashes (and stay resumable)
        blob["adapt_steps"] = opts.adapt_steps
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def episode_meta(bench: Benchmark, fold: int, seed: int, opts: EvalOptions, n: int) -> dict[str, Any]:
    """What an episode list is saved with (and checked against when reloaded)."""
    return {"benchmark": bench.name, "fold": fold, "seed": seed, "split": bench.split, "num_episodes": n,
            "query_sampling": opts.query_sampling, "num_images": len(bench.dataset), **opts.benchmark_meta}


def hash_specs(specs: list[EpisodeSpec], meta: dict[str, Any], path: Path | None) -> tuple[str, str | None]:
    """Save the episode list (to ``path``, or a scratch file) and return (hash, saved path)."""
    if path is not None:
        return save_episodes(path, specs, meta), str(path)
    with tempfile.TemporaryDirectory(prefix="vlfss-episodes-") as tmp:
        return save_episodes(Path(tmp) / "episodes.json", specs, meta), None


def load_episode_files(files: Sequence[str], bench_of: Callable[[int], Benchmark], opts: EvalOptions,
                       folds: list[int] | None, kmax: int) -> list[EpisodeList]:
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
        _check_episode_file(f, specs, meta, bench, fold, opts)
        out.append((fold, seed, specs, meta["hash"], str(f)))
    if folds is not None:
        missing = sorted(set(folds) - {o[0] for o in out})
        if missing:
            raise DataError(f"no episodes file for fold(s) {missing} among {list(files)}")
    keys = [(o[0], o[1]) for o in out]
    if len(set(keys)) != len(keys):
        raise DataError("two episodes files are for the same fold and seed; pass one per (fold, seed)")
    return sorted(out, key=lambda o: (o[1], o[0]))


def _check_episode_file(f: str, specs: list[EpisodeSpec], meta: dict[str, Any], bench: Benchmark, fold: int,
                        opts: EvalOptions) -> None:
    """DataError unless the file was made with this run's options and holds only the fold's novel classes."""
    for key, want in (("split", bench.split), ("n_way", opts.n_way), *opts.benchmark_meta.items()):
        if key in meta and meta[key] != want:
            raise DataError(f"episodes file {f} was made with {key}={meta[key]!r}, this run has {want!r}")
    novel = set(bench.novel_classes(fold))
    bad = sorted({c for s in specs for c in s.class_ids} - novel)
    if bad:
        raise DataError(f"episodes file {f} holds classes {bad[:5]} that are not novel in fold {fold} of "
                        f"{bench.name} (another split convention or dataset?)")
