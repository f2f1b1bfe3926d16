"""The plain folder format: the simplest way to bring your own few-shot data.

Layout (``root`` is the folder you pass)::

    root/classes.txt            one class name per line; line i (1-based) is label value i
    root/images/<id>.png|jpg|jpeg
    root/masks/<id>.png         label map: 0 background, c+1 for class c (0-based), 255 ignore
    root/splits/<split>.txt     optional: one image id per line
    root/meta.jsonl             optional: {"id": ..., "caption": ..., "class_ids": [0-based ...]} per line

With ``meta.jsonl`` the classes of each image come from ``class_ids``; otherwise the masks are scanned once.
``write_folder_dataset`` writes this layout (each file atomically) for tests and the synthetic benchmark.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .base import IMAGE_EXTENSIONS, SegDataset, classes_of_label, resolve_dir
from .image import encode_jpeg, encode_png

logger = logging.getLogger(__name__)

LAYOUT = (
    "root/classes.txt (one class name per line), root/images/<id>.{png,jpg,jpeg}, root/masks/<id>.png, "
    "optional root/splits/<split>.txt and root/meta.jsonl"
)
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def read_class_names(path: Path, what: str) -> list[str]:
    """Class names from a one-name-per-line file; blank lines are allowed only at the end."""
    if not path.is_file():
        raise DataError(f"{what}: missing {path} (expected layout: {LAYOUT})")
    lines = path.read_text("utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    if not names:
        raise DataError(f"{what}: {path} lists no classes; write one class name per line")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise DataError(f"{what}: {path} has blank line(s) {blank[:5]}; line i must name label i, so remove them")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{what}: {path} names class(es) {dup[:5]} more than once")
    return names


def _list_files(folder: Path, exts: Sequence[str], what: str) -> dict[str, Path]:
    """Map file stem -> path for the files in ``folder`` with one of ``exts`` (case-insensitive)."""
    out: dict[str, Path] = {}
    for entry in os.scandir(folder):
        if not entry.is_file():
            continue
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() not in exts:
            continue
        if stem in out:
            raise DataError(f"{what}: two files for id {stem!r} in {folder} ({out[stem].name}, {entry.name}); keep one")
        out[stem] = Path(entry.path)
    return out


def read_id_list(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file."""
    return [ln.strip() for ln in path.read_text("utf-8").splitlines() if ln.strip()]


class FolderDataset(SegDataset):
    """Reader for the folder format (see the module docstring); ``split`` selects ``splits/<split>.txt``."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        name: str = "folder",
        index_file: str | Path | None = None,
    ) -> None:
        super().__init__(index_file)
        self.name = name
        self.root = resolve_dir(root, f"{name} dataset", LAYOUT)
        self.split = split
        self.class_names = read_class_names(self.root / "classes.txt", f"{name} dataset")
        missing = [d for d in ("images", "masks") if not (self.root / d).is_dir()]
        if missing:
            raise DataError(f"{name} dataset: {self.root} has no {' or '.join(d + '/' for d in missing)} folder "
                            f"(expected layout: {LAYOUT})")
        images = _list_files(self.root / "images", IMAGE_EXTENSIONS, f"{name} dataset")
        masks = _list_files(self.root / "masks", (".png",), f"{name} dataset")
        self._ids = self._select_ids(split, images)
        no_image = [i for i in self._ids if i not in images]
        no_mask = [i for i in self._ids if i not in masks]
        if no_image or no_mask:
            parts = []
            if no_image:
                parts.append(f"{len(no_image)} id(s) without images/<id>.png|jpg (e.g. {no_image[:3]})")
            if no_mask:
                parts.append(f"{len(no_mask)} id(s) without masks/<id>.png (e.g. {no_mask[:3]})")
            raise DataError(f"{name} dataset {self.root}: " + "; ".join(parts))
        if not self._ids:
            raise DataError(f"{name} dataset {self.root}: no images selected (split {split!r}); expected {LAYOUT}")
        self._image_paths = [images[i] for i in self._ids]
        self._mask_paths = [masks[i] for i in self._ids]
        self._meta = self._read_meta()

    def _select_ids(self, split: str | None, images: Mapping[str, Path]) -> list[str]:
        splits_dir = self.root / "splits"
        if split is None:
            return sorted(images)
        path = splits_dir / f"{split}.txt"
        if path.is_file():
            ids = read_id_list(path)
            if len(set(ids)) != len(ids):
                raise DataError(f"{self.name} dataset: {path} lists some ids more than once")
            return ids
        if splits_dir.is_dir():
            have = sorted(p.stem for p in splits_dir.glob("*.txt"))
            raise DataError(f"{self.name} dataset: no split file {path}; available splits: {have}")
        logger.info("%s: %s has no splits/ folder; split %r uses all %d images", self.name, self.root, split,
                    len(images))
        return sorted(images)

    def _read_meta(self) -> dict[str, dict]:
        path = self.root / "meta.jsonl"
        if not path.is_file():
            return {}
        meta: dict[str, dict] = {}
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise DataError(f"{self.name} dataset: {path} line {n} is not JSON ({e})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise DataError(f"{self.name} dataset: {path} line {n} needs a string \"id\" field")
            cids = rec.get("class_ids")
            if cids is not None:
                if not isinstance(cids, list) or not all(isinstance(c, int) and 0 <= c < self.num_classes
                                                         for c in cids):
                    raise DataError(f"{self.name} dataset: {path} line {n}: class_ids must be a list of 0-based ids "
                                    f"below {self.num_classes}, got {cids!r}")
            meta[rec["id"]] = rec
        return meta

    def _image_path(self, i: int) -> Path:
        return self._image_paths[i]

    def _label_path(self, i: int) -> Path:
        return self._mask_paths[i]

    def caption(self, i: int) -> str | None:
        self._check_index(i)
        cap = self._meta.get(self._ids[i], {}).get("caption")
        return str(cap) if cap is not None else None

    def _compute_classes(self) -> list[list[int]]:
        recs = [self._meta.get(i, {}).get("class_ids") for i in self._ids]
        if all(r is not None for r in recs):
            return [sorted(set(r)) for r in recs]
        if self._meta:
            logger.info("%s: meta.jsonl lacks class_ids for some images; scanning the masks", self.name)
        return super()._compute_classes()


# ------------------------------------------------------------------------------------------ writer
def write_file_atomic(path: Path, data: bytes, durable: bool) -> None:
    """Write through a temporary name and rename; ``durable`` also fsyncs (slow: ~4 ms per file)."""
    if durable:
        from ..io_utils import atomic_write_bytes  # io_utils imports torch; the readers stay torch-free

        atomic_write_bytes(path, data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_folder_dataset(
    root: str | Path,
    items: Iterable[Mapping],
    class_names: Sequence[str],
    splits: Mapping[str, Sequence[str]] | None = None,
    image_format: str = "png",
    durable: bool = True,
) -> Path:
    """Write ``items`` in the folder format under ``root``; returns ``root``.

    Each item is a mapping with ``id`` (letters, digits, ``_.-``), ``image`` (H x W x 3 uint8), ``mask``
    (H x W uint8 label map) and optionally ``caption``, ``class_ids`` (computed from the mask when absent)
    and ``split`` (the id is added to ``splits/<split>.txt``). ``splits`` maps split names to id lists.
    Every file is written to a temporary name and renamed; ``meta.jsonl`` is written last.
    """
    if image_format not in ("png", "jpg"):
        raise InputError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    names = [str(n) for n in class_names]
    if not names or any(not n.strip() or "\n" in n for n in names):
        raise InputError("class_names must be a non-empty list of non-blank single-line names")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    write_file_atomic(root / "classes.txt", ("\n".join(names) + "\n").encode("utf-8"), durable)
    split_ids: dict[str, list[str]] = {k: list(v) for k, v in (splits or {}).items()}
    meta_lines: list[str] = []
    seen: set[str] = set()
    for n, item in enumerate(items):
        iid = item.get("id")
        if not isinstance(iid, str) or not _ID_RE.match(iid):
            raise InputError(f"item {n}: id must be a string of letters, digits, '_', '.', '-', got {iid!r}")
        if iid in seen:
            raise InputError(f"item {n}: duplicate id {iid!r}")
        seen.add(iid)
        image, mask = np.asarray(item["image"]), np.asarray(item["mask"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"item {iid!r}: image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
        if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise InputError(
                f"item {iid!r}: mask must be H x W uint8 matching the image, got {mask.shape} {mask.dtype}"
            )
        cids = item.get("class_ids")
        cids = classes_of_label(mask, len(names), iid) if cids is None else sorted({int(c) for c in cids})
        img_bytes = encode_png(image) if image_format == "png" else encode_jpeg(image)
        write_file_atomic(root / "images" / f"{iid}.{image_format}", img_bytes, durable)
        write_file_atomic(root / "masks" / f"{iid}.png", encode_png(mask), durable)
        rec: dict = {"id": iid, "class_ids": cids}
        if item.get("caption") is not None:
            rec["caption"] = str(item["caption"])
        meta_lines.append(json.dumps(rec))
        if item.get("split") is not None:
            split_ids.setdefault(str(item["split"]), []).append(iid)
    if split_ids:
        (root / "splits").mkdir(exist_ok=True)
        for split, ids in split_ids.items():
            write_file_atomic(root / "splits" / f"{split}.txt", ("\n".join(ids) + "\n").encode("utf-8"), durable)
    write_file_atomic(root / "meta.jsonl", ("\n".join(meta_lines) + "\n").encode("utf-8"), durable)
    return root
