"""The synthetic benchmark written to disk, as a Hugging Face dataset or in the folder format.

``materialize_synthetic`` renders scenes with ``generate_scene`` and writes them under
``<root>/synthetic/seed<seed>-<size>px/<split>-<n>/<fmt>`` (root defaults to ``default_cache_dir()``).
Splits never overlap: split ``s`` uses scene indices ``SPLIT_OFFSETS[s] + 0..n-1`` of the same seeded world.
A folder is written under a temporary name with a marker file written last, then renamed into place, so a
complete materialisation is reused and a crashed one is never mistaken for complete. The marker records the
parameters and a fingerprint of the generator's output, so a changed ``generate_scene`` regenerates.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..errors import DataError, InputError
from .base import SegDataset, default_cache_dir, encode_png, normalise_split
from .benchmark import Benchmark
from .synthetic import CLASS_NAMES, NUM_FOLDS, SyntheticConfig, fold_classes, generate_scene

logger = logging.getLogger(__name__)

__all__ = ["SPLIT_OFFSETS", "DEFAULT_SIZES", "SyntheticBenchmark", "default_cache_dir", "materialize_synthetic",
           "synthetic_dataset", "synthetic_path"]

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
DEFAULT_SIZES = {"train": 2000, "val": 500, "test": 500}
MARKER = ".vlfss-complete.json"
FORMATS = ("hf", "folder")
_FORMAT_VERSION = 1


def synthetic_path(root: str | Path | None, split: str, n_images: int, seed: int, fmt: str, image_size: int,
                   texture_scale: float | None = None) -> Path:
    """Where ``materialize_synthetic`` puts (or finds) one materialisation."""
    base = Path(root).expanduser() if root is not None else default_cache_dir()
    world = f"seed{seed}-{image_size}px" + ("" if texture_scale is None else f"-tex{texture_scale:g}")
    return base / "synthetic" / world / f"{split}-{n_images}" / fmt


def _render(args: tuple[int, int, int, str, float | None]) -> dict:
    """One scene as PNG bytes (runs in worker processes)."""
    seed, index, image_size, split, texture_scale = args
    scene = generate_scene(seed, index, SyntheticConfig(image_size=image_size, texture_scale=texture_scale))
    return {
        "id": f"{split}_{index - SPLIT_OFFSETS[split]:07d}",
        "image": encode_png(scene.image),
        "mask": encode_png(scene.mask),
        "caption": scene.caption,
        "class_ids": list(scene.class_ids),
    }


def _scenes(seed: int, split: str, n: int, image_size: int, workers: int,
            texture_scale: float | None = None) -> Iterator[dict]:
    jobs = [(seed, SPLIT_OFFSETS[split] + k, image_size, split, texture_scale) for k in range(n)]
    if workers <= 1:
        yield from map(_render, jobs)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(_render, jobs, chunksize=max(1, n // (workers * 8)))


def _generator_fingerprint(seed: int, split: str, image_size: int, texture_scale: float | None = None) -> str:
    """Hash of the split's first scene: a changed generator invalidates old materialisations (one scene, ~10 ms)."""
    import hashlib

    cfg = SyntheticConfig(image_size=image_size, texture_scale=texture_scale)
    sc = generate_scene(seed, SPLIT_OFFSETS[split], cfg)
    return hashlib.sha256(sc.image.tobytes() + sc.mask.tobytes() + sc.caption.encode()).hexdigest()[:16]


def _marker_ok(path: Path, params: dict) -> bool:
    try:
        return json.loads((path / MARKER).read_text("utf-8")) == params
    except (OSError, ValueError):
        return False


def _write_hf(tmp: Path, rows: Iterator[dict]) -> None:
    import datasets
    from datasets import ClassLabel, Dataset, Features, Image, List, Value

    cols: dict[str, list] = {"id": [], "image": [], "mask": [], "caption": [], "class_ids": []}
    for r in rows:
        cols["id"].append(r["id"])
        cols["image"].append({"bytes": r["image"], "path": None})
        cols["mask"].append({"bytes": r["mask"], "path": None})
        cols["caption"].append(r["caption"])
        cols["class_ids"].append(r["class_ids"])
    features = Features({
        "id": Value("string"), "image": Image(), "mask": Image(), "caption": Value("string"),
        "class_ids": List(ClassLabel(names=list(CLASS_NAMES))),
    })
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        Dataset.from_dict(cols, features=features).save_to_disk(str(tmp))
    finally:
        if bars_were_on:
            datasets.utils.enable_progress_bars()


def _write_folder(tmp: Path, rows: Iterator[dict], split: str) -> None:
    """The folder format from already-encoded PNGs (write_folder_dataset would re-encode them)."""
    from .folder import write_file_atomic

    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    (tmp / "splits").mkdir()
    write_file_atomic(tmp / "classes.txt", ("\n".join(CLASS_NAMES) + "\n").encode(), durable=False)
    ids, meta = [], []
    for r in rows:
        write_file_atomic(tmp / "images" / f"{r['id']}.png", r["image"], durable=False)
        write_file_atomic(tmp / "masks" / f"{r['id']}.png", r["mask"], durable=False)
        ids.append(r["id"])
        meta.append(json.dumps({"id": r["id"], "caption": r["caption"], "class_ids": r["class_ids"]}))
    write_file_atomic(tmp / "splits" / f"{split}.txt", ("\n".join(ids) + "\n").encode(), durable=False)
    write_file_atomic(tmp / "meta.jsonl", ("\n".join(meta) + "\n").encode(), durable=False)


def materialize_synthetic(
    root: str | Path | None = None,
    split: str = "train",
    n_images: int | None = None,
    seed: int = 0,
    fmt: str = "hf",
    image_size: int = 96,
    workers: int | None = None,
    texture_scale: float | None = None,
) -> Path:
    """Write (or reuse) ``n_images`` synthetic scenes of ``split`` in format ``fmt``; returns the folder.

    ``fmt`` is ``"hf"`` (``datasets.Dataset.save_to_disk``) or ``"folder"`` (see ``vlfss.data.folder``).
    ``workers`` processes render scenes in parallel (default: up to 4 for 256+ images, else 1).
    ``texture_scale``: pattern period multiplier (None: image_size / 96, the same look at any size; 1.0: textures
    at their native pixel size, so a larger image shows more of the world, as a large photo does).
    """
    split = normalise_split(split)
    if fmt not in FORMATS:
        raise InputError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    n = DEFAULT_SIZES[split] if n_images is None else n_images
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < SPLIT_OFFSETS["val"]:
        raise InputError(f"n_images must be a positive integer below {SPLIT_OFFSETS['val']}, got {n_images!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise InputError(f"image_size must be an integer >= 16, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if texture_scale is not None and (isinstance(texture_scale, bool) or not isinstance(texture_scale, (int, float))
                                      or not 0.1 <= texture_scale <= 10):
        raise InputError(f"texture_scale must be a number in 0.1..10 (or None), got {texture_scale!r}")
    final = synthetic_path(root, split, n, seed, fmt, image_size, texture_scale)
    params = {"version": _FORMAT_VERSION, "split": split, "n_images": n, "seed": seed, "fmt": fmt,
              "image_size": image_size,
              "generator": _generator_fingerprint(seed, split, image_size, texture_scale)}
    if texture_scale is not None:
        params["texture_scale"] = texture_scale
    if _marker_ok(final, params):
        logger.debug("reusing synthetic %s split at %s", split, final)
        return final
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if n >= 256 else 1
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{fmt}.tmp-", dir=final.parent))
    except OSError as e:
        raise DataError(f"cannot write the synthetic benchmark under {final.parent}: {e}; set VLFSS_CACHE or pass "
                        "root= to a writable folder") from None
    try:
        logger.info("materialising %d synthetic %s images (seed %d, %d px) as %s in %s", n, split, seed, image_size,
                    fmt, final)
        rows = _scenes(seed, split, n, image_size, workers, texture_scale)
        if fmt == "hf":
            shutil.rmtree(tmp)  # save_to_disk wants to create the folder itself
            _write_hf(tmp, rows)
        else:
            _write_folder(tmp, rows, split)
        from ..io_utils import atomic_write_text

        atomic_write_text(tmp / MARKER, json.dumps(params, sort_keys=True))  # written last: marks completeness
        if final.exists():
            if _marker_ok(final, params):  # another process finished first
                return final
            shutil.rmtree(final)  # an incomplete or outdated copy
        try:
            os.rename(tmp, final)
        except OSError:
            if _marker_ok(final, params):  # lost a race to a concurrent writer
                return final
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def synthetic_dataset(
    split: str = "test",
    n_images: int | None = None,
    seed: int = 0,
    fmt: str = "hf",
    root: str | Path | None = None,
    image_size: int = 96,
    workers: int | None = None,
    texture_scale: float | None = None,
) -> SegDataset:
    """The reader (HFDataset or FolderDataset) of a materialised synthetic split (materialised if needed)."""
    split = normalise_split(split)
    path = materialize_synthetic(root, split, n_images, seed, fmt, image_size, workers, texture_scale)
    if fmt == "hf":
        from .hf import HFDataset

        return HFDataset(path, name="synthetic")
    from .folder import FolderDataset

    return FolderDataset(path, split=split, name="synthetic")


class SyntheticBenchmark(Benchmark):
    """The synthetic world as a four-fold benchmark (fold i novel = classes 5i..5i+4), read from disk."""

    def __init__(
        self,
        split: str = "test",
        fold: int = 0,
        n_images: int | None = None,
        seed: int = 0,
        fmt: str = "hf",
        root: str | Path | None = None,
        image_size: int = 96,
        workers: int | None = None,
        texture_scale: float | None = None,
    ) -> None:
        split = normalise_split(split)
        dataset = synthetic_dataset(split, n_images, seed, fmt, root, image_size, workers, texture_scale)
        super().__init__("synthetic", dataset, split, fold, [fold_classes(f) for f in range(NUM_FOLDS)])
        self.seed = seed
        self.fmt = fmt
