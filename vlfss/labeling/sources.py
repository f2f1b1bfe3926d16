"""What to label: SOURCE arguments resolved to one sorted list of items, and reading an item's image.

A SOURCE is a folder (searched recursively for image files), a glob (``"photos/**/*.jpg"``), a text file listing
image paths (one a line; relative paths are relative to the list file; ``#`` starts a comment), a single image
file, or a Hugging Face dataset ``hf:NAME_OR_SAVED_DIR[:SPLIT]`` (a ``save_to_disk`` folder, or a hub name
when online), whose image column is found (the one ``datasets.Image`` column, or the one named ``image``) or
named with ``image_column``.

Every item gets a unique output ``name`` (its path relative to the common folder of all the file items, without
the extension, which is kept only where two files would collide) and a sort order that does not depend on the
file system, so every process of a sharded run sees the same list.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.image import decode_rgb
from ..errors import DataError, InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Item:
    """One image to label."""

    path: str  # what the manifest records: an absolute file path, or hf:<source>[:<split>]#<row>
    name: str  # output name (posix, relative, no extension): labels/<name>.png
    file_name: str  # COCO file_name: the path relative to ``root`` (or the name plus .png for dataset rows)
    row: int = -1  # row of a Hugging Face dataset (-1 for files)
    dataset: int = -1  # which of the run's Hugging Face datasets (-1 for files)


@dataclass
class ImageSource:
    """The resolved SOURCE arguments: items sorted by path, and the datasets their rows come from."""

    items: list[Item]
    root: str | None  # common folder of the file items (COCO file_names are relative to it)
    datasets: list[Any]  # datasets.Dataset objects with their image column cast to undecoded bytes
    columns: list[str]  # the image column of each dataset

    def __len__(self) -> int:
        return len(self.items)

    def read(self, item: Item) -> bytes:
        """The item's encoded image bytes (a file's content, or a dataset cell's bytes)."""
        if item.row < 0:
            with open(item.path, "rb") as f:
                return f.read()
        cell = self.datasets[item.dataset][item.row][self.columns[item.dataset]]
        if cell is None:
            raise InputError(f"{item.path}: the image cell is empty")
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            with open(cell["path"], "rb") as f:
                return f.read()
        raise InputError(f"{item.path}: the image cell has neither bytes nor a path")


def content_hash(data: bytes) -> str:
    """sha1 of an image file's bytes: what a rerun compares to decide whether an image changed."""
    return hashlib.sha1(data).hexdigest()


def decode(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes -> RGB H x W x 3 uint8 with the project's one decoder (the pixels `segment` sees)."""
    return decode_rgb(data, where)


# ------------------------------------------------------------------------------------------ files
def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _folder_files(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under ``folder`` (recursive; hidden folders and ``exclude`` skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or (here / d).resolve() != exclude))
        found.extend(here / f for f in filenames if not f.startswith(".") and _is_image(Path(f)))
    return found


def _list_file(path: Path) -> list[Path]:
    """Paths listed in a text file, relative ones resolved against the list file's folder."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"SOURCE {path}: cannot read it as a list of image paths ({e})") from None
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def _file_source(arg: str, exclude: Path | None) -> list[Path]:
    """One non-dataset SOURCE -> its files (raises InputError when missing or empty)."""
    if _GLOB_CHARS.search(arg):
        files = [Path(p) for p in glob.glob(os.path.expanduser(arg), recursive=True) if Path(p).is_file()]
        if not files:
            raise InputError(f"SOURCE {arg!r} matched no files; check the pattern (quote it so the shell "
                             "does not expand it)")
        return files
    path = Path(arg).expanduser()
    if not path.exists():
        raise InputError(f"SOURCE {arg} does not exist; give a folder, a glob, a list file or hf:DATASET")
    if path.is_dir():
        files = _folder_files(path, exclude)
        if not files:
            raise InputError(f"SOURCE {arg} holds no image files ({', '.join(IMAGE_EXTENSIONS)}), "
                             "searched recursively")
        return files
    if path.suffix.lower() in LIST_EXTENSIONS:
        files = _list_file(path)
        if not files:
            raise InputError(f"SOURCE {arg} lists no image paths (one path a line)")
        return files
    return [path]


def _file_items(paths: list[Path]) -> tuple[list[Item], str | None]:
    """Unique absolute paths -> items named relative to their common folder."""
    absolute = sorted({os.path.abspath(p) for p in paths})
    if not absolute:
        return [], None
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    rel = [Path(os.path.relpath(p, root)).as_posix() for p in absolute]
    stems = [r.rsplit(".", 1)[0] if "." in Path(r).name else r for r in rel]
    clash = {s for s in stems if stems.count(s) > 1} if len(set(stems)) != len(stems) else set()
    names = [r if s in clash else s for r, s in zip(rel, stems)]  # a.png and a.jpg keep their extensions
    return [Item(path=p, name=n, file_name=r) for p, n, r in zip(absolute, names, rel)], root


# ------------------------------------------------------------------------------ Hugging Face datasets
def parse_hf(arg: str) -> tuple[str, str | None]:
    """``hf:NAME_OR_DIR[:SPLIT]`` -> (name or folder, split or None)."""
    body = arg[3:]
    if not body:
        raise InputError("SOURCE hf: needs a dataset: hf:NAME_OR_SAVED_DIR[:SPLIT]")
    head, sep, tail = body.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return body, None


def _load_hf(name: str, split: str | None):
    from ..data.hf import load_hf_source

    if Path(name).expanduser().exists():
        return load_hf_source(name, split, f"SOURCE hf:{name}")
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # hub / network errors come from deep inside datasets: say what to do
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise DataError(f"SOURCE hf:{name}: cannot load it ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        "offline? save it elsewhere with Dataset.save_to_disk and pass hf:/path/to/folder") from None
    return load_hf_source(ds, split, f"SOURCE hf:{name}")


def image_column(ds: Any, wanted: str | None, where: str) -> str:
    """The dataset's image column: ``wanted`` if given (checked), else its one ``datasets.Image`` column."""
    from datasets import Image

    cols = list(ds.column_names)
    if wanted is not None:
        if wanted not in cols:
            raise DataError(f"{where}: no column {wanted!r}; its columns are {cols}")
        if not isinstance(ds.features[wanted], Image):
            raise DataError(f"{where}: column {wanted!r} is {ds.features[wanted]}, not an image column")
        return wanted
    images = [c for c in cols if isinstance(ds.features[c], Image)]
    if len(images) == 1:
        return images[0]
    if "image" in images:
        return "image"
    if not images:
        raise DataError(f"{where}: no image column; its columns are {cols}; name one with --image-column")
    raise DataError(f"{where}: several image columns {images}; choose one with --image-column")


def _hf_items(arg: str, k: int, n_sets: int, column: str | None) -> tuple[list[Item], Any, str]:
    from datasets import Image

    name, split = parse_hf(arg)
    ds = _load_hf(name, split)
    col = image_column(ds, column, f"SOURCE {arg}")
    if len(ds) == 0:
        raise InputError(f"SOURCE {arg} has no rows")
    ids = [str(x) for x in ds["id"]] if "id" in ds.column_names else None
    if ids is not None and len(set(ids)) != len(ids):
        ids = None  # duplicate ids cannot name files; use row numbers
    width = len(str(len(ds) - 1))
    prefix = f"{k}/" if n_sets > 1 else ""
    tag = f"hf:{name}" + (f":{split}" if split else "")
    items = []
    for row in range(len(ds)):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", ids[row]).strip(".") if ids else ""
        nm = prefix + (stem or f"{row:0{width}d}")
        items.append(Item(path=f"{tag}#{row}", name=nm, file_name=nm + ".png", row=row, dataset=k))
    return items, ds.select_columns([col]).cast_column(col, Image(decode=False)), col


def resolve_sources(sources: Sequence[str | os.PathLike], image_column_name: str | None = None,
                    exclude: str | os.PathLike | None = None) -> ImageSource:
    """SOURCE arguments -> one ImageSource (items sorted by path; files under ``exclude`` left out)."""
    if not sources:
        raise InputError("no SOURCE given: pass a folder, a glob, a list file or hf:DATASET")
    ex = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    hf_args = [str(s) for s in sources if str(s).startswith("hf:")]
    for s in sources:
        if not str(s).startswith("hf:"):
            files.extend(_file_source(str(s), ex))
    if ex is not None:
        files = [f for f in files if ex not in Path(os.path.abspath(f)).parents]
    items, root = _file_items(files)
    sets, cols = [], []
    for k, arg in enumerate(hf_args):
        hf_items, ds, col = _hf_items(arg, k, len(hf_args), image_column_name)
        items.extend(hf_items)
        sets.append(ds)
        cols.append(col)
    if not items:
        raise InputError(f"SOURCE {' '.join(map(str, sources))}: no images to label")
    taken: set[str] = set()
    for it in items:
        if it.name in taken:
            raise InputError(f"two SOURCE images would both write labels/{it.name}.png; label them in separate runs "
                             "or rename one")
        taken.add(it.name)
    return ImageSource(items, root, sets, cols)
