"""Dataset readers and the benchmark registry.

``build_benchmark(name, data_root, split, fold, **options)`` returns a ``Benchmark`` (a ``SegDataset`` for the
split plus its folds) for one of ``list_benchmarks()``: ``pascal5i``, ``coco20i``, ``fss1000``, ``synthetic``,
``folder`` and ``hf``. Readers are imported when a benchmark is built, so importing this package is cheap.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError, InputError
from .base import SegDataset, default_cache_dir, normalise_split
from .benchmark import Benchmark, consecutive_folds

__all__ = ["Benchmark", "SegDataset", "build_benchmark", "default_cache_dir", "list_benchmarks"]


def _index_file(option: str | Path | None, name: str, root: str | Path, split: str) -> Path | None:
    """``"auto"``: a per-(root, split) class-index cache under the vlfss cache dir; None disables caching."""
    if option != "auto":
        return Path(option) if option is not None else None
    key = hashlib.sha256(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:16]
    return default_cache_dir() / "index" / f"{name}-{split}-{key}.json"


def _folds_option(num_classes: int, folds: Sequence[Sequence[int]] | None, num_folds: int) -> list[list[int]]:
    if folds is None:
        return consecutive_folds(num_classes, num_folds)
    out = [list(map(int, f)) for f in folds]
    if not out or any(not f for f in out):
        raise InputError("folds must be a non-empty list of non-empty class-id lists")
    return out


def _pascal(data_root, split, fold, split_dir=None, index_file="auto") -> Benchmark:
    from .pascal import NUM_FOLDS, PascalDataset, pascal_fold_classes

    split = normalise_split(split)
    ds = PascalDataset(data_root, split, fold, split_dir, index_file=None)
    if ds.list_format == "voc":  # only the VOC lists need a mask scan worth caching
        ds.use_index_file(_index_file(index_file, "pascal5i", ds.root, split))
    return Benchmark("pascal5i", ds, split, fold, [pascal_fold_classes(f) for f in range(NUM_FOLDS)])


def _coco(data_root, split, fold, convention="interleaved", index_file="auto") -> Benchmark:
    from .coco import NUM_FOLDS, COCODataset, coco_fold_classes

    split = normalise_split(split)
    coco_fold_classes(0, convention)  # validate the convention before touching the disk
    ds = COCODataset(data_root, split, index_file=None)
    ds.use_index_file(_index_file(index_file, "coco20i", ds.root, split))
    return Benchmark("coco20i", ds, split, fold, [coco_fold_classes(f, convention) for f in range(NUM_FOLDS)])


def _fss(data_root, split, fold=0, split_dir=None) -> Benchmark:
    from .fss import FSS1000Dataset

    split = normalise_split(split)
    ds = FSS1000Dataset(data_root, split, split_dir)
    n_train, n_val = len(ds.splits["train"]), len(ds.splits["val"])
    val = list(range(n_train, n_train + n_val))
    test = list(range(n_train + n_val, ds.num_classes))
    novel = val if split == "val" else test
    return Benchmark("fss1000", ds, split, fold, [novel], bases=[list(range(n_train))])


def _synthetic(data_root, split, fold, n_images=None, seed=0, fmt="hf", image_size=96, workers=None,
               texture_scale=None) -> Benchmark:
    from .synthetic_store import SyntheticBenchmark

    return SyntheticBenchmark(split, fold, n_images, seed, fmt, data_root, image_size, workers, texture_scale)


def _synthetic_large(data_root, split, fold, n_images=None, seed=0, fmt="hf", image_size=288, workers=None,
                     texture_scale=1.0) -> Benchmark:
    """The synthetic world as large photos: 288-px scenes with textures at their native pixel size (3x the
    encoder's 96-px input in each direction), same classes, folds and episode seeds as ``synthetic``."""
    bench = _synthetic(data_root, split, fold, n_images, seed, fmt, image_size, workers, texture_scale)
    bench.name = "synthetic-large"  # what result rows, captions and episode files record
    return bench


def _folder(data_root, split, fold, folds=None, num_folds=4, index_file=None) -> Benchmark:
    from .folder import FolderDataset

    ds = FolderDataset(data_root, split, index_file=index_file)
    return Benchmark("folder", ds, normalise_split(split), fold, _folds_option(ds.num_classes, folds, num_folds))


def _hf(data_root, split, fold, class_names=None, folds=None, num_folds=4, hf_split=None, index_file=None) -> Benchmark:
    from .hf import HFDataset

    ds = HFDataset(data_root, hf_split, class_names, index_file=index_file)
    return Benchmark("hf", ds, normalise_split(split), fold, _folds_option(ds.num_classes, folds, num_folds))


_BUILDERS: dict[str, Callable[..., Benchmark]] = {
    "pascal5i": _pascal,
    "coco20i": _coco,
    "fss1000": _fss,
    "synthetic": _synthetic,
    "synthetic-large": _synthetic_large,
    "folder": _folder,
    "hf": _hf,
}


def list_benchmarks() -> list[str]:
    """Names accepted by ``build_benchmark``."""
    return sorted(_BUILDERS)


def build_benchmark(
    name: str, data_root: str | Path | Any | None = None, split: str = "test", fold: int = 0, **options: Any
) -> Benchmark:
    """The benchmark ``name`` for ``split`` and ``fold``; ``options`` are the reader's extra arguments.

    ``data_root``: the dataset folder (for ``hf`` also a ``datasets.Dataset``; for ``synthetic`` the cache
    root, default ``default_cache_dir()``). Options per benchmark: pascal5i ``split_dir``, ``index_file``;
    coco20i ``convention`` ("interleaved" | "consecutive"), ``index_file``; fss1000 ``split_dir``; synthetic
    ``n_images``, ``seed``, ``fmt``, ``image_size``, ``workers``; folder ``folds`` or ``num_folds``;
    hf ``class_names``, ``folds`` or ``num_folds``, ``hf_split`` (a DatasetDict split).
    """
    builder = _BUILDERS.get(str(name).lower())
    if builder is None:
        raise DataError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(list_benchmarks())}")
    try:
        inspect.signature(builder).bind(data_root, split, fold, **options)
    except TypeError:
        allowed = [p for p in inspect.signature(builder).parameters if p not in ("data_root", "split", "fold")]
        bad = sorted(set(options) - set(allowed))
        raise InputError(f"benchmark {name!r} does not take option(s) {bad}; it takes {allowed}") from None
    return builder(data_root, split, fold, **options)
