"""FSS-1000: 1000 classes of 10 images each, split by class into 520 train / 240 val / 240 test.

Layout (``root`` is the FSS-1000 folder)::

    root/<class>/<n>.jpg
    root/<class>/<n>.png        binary mask, 0 background, 255 (>= 128) foreground
    root/splits/fss/{trn,val,test}.txt   optional: class names, one per line (HSNet ships these as
                                         data/splits/fss/*.txt: copy them here, or pass split_dir=)

Without split files the class folders are sorted and split 52% / 24% / 24% (520/240/240 for the full
dataset) with a warning: numbers are then not comparable with published ones.

Class ids follow HSNet: sorted train classes are 0..519, sorted val classes 520..759, sorted test
classes 760..999; ``class_names`` lists all of them, and a split's dataset holds only its own classes'
images. A mask pixel >= 128 gets label ``c + 1`` for the image's class ``c``; with the full 1000 classes
the label maps are uint16 (see ``SegDataset.ignore_label``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import SegDataset, normalise_split, resolve_dir
from .folder import read_id_list

logger = logging.getLogger(__name__)

SPLIT_SIZES = {"train": 520, "val": 240, "test": 240}
_LIST_NAMES = {"train": "trn", "val": "val", "test": "test"}
LAYOUT = (
    "root/<class>/<n>.jpg with root/<class>/<n>.png binary masks, and optionally HSNet's split lists "
    "root/splits/fss/{trn,val,test}.txt (or pass split_dir=)"
)


def fallback_split(class_names: Sequence[str]) -> dict[str, list[str]]:
    """Deterministic split of sorted class names in the published proportions 520 : 240 : 240."""
    names = sorted(class_names)
    n = len(names)
    n_train = round(n * SPLIT_SIZES["train"] / 1000)
    n_val = round(n * SPLIT_SIZES["val"] / 1000)
    return {"train": names[:n_train], "val": names[n_train:n_train + n_val], "test": names[n_train + n_val:]}


def _natural_key(stem: str) -> tuple[int, int | str]:
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def fss_splits(root: Path, split_dir: str | Path | None = None) -> tuple[dict[str, list[str]], bool]:
    """The class names of each split and whether they came from split files (else the sorted fallback)."""
    cand = Path(split_dir).expanduser() if split_dir is not None else root / "splits" / "fss"
    if split_dir is not None and not cand.is_dir():
        raise DataError(f"FSS-1000: split_dir {cand} does not exist; expected {cand}/{{trn,val,test}}.txt")
    files = {s: cand / f"{_LIST_NAMES[s]}.txt" for s in SPLIT_SIZES}
    if all(f.is_file() for f in files.values()):
        splits = {s: sorted(read_id_list(f)) for s, f in files.items()}
        seen: dict[str, str] = {}
        for s, names in splits.items():
            for nm in names:
                if nm in seen:
                    raise DataError(f"FSS-1000: class {nm!r} is in both the {seen[nm]} and {s} lists in {cand}")
                seen[nm] = s
        return splits, True
    if any(f.is_file() for f in files.values()):
        missing = [str(f) for f in files.values() if not f.is_file()]
        raise DataError(f"FSS-1000: incomplete split lists in {cand}: missing {missing}")
    classes = [e.name for e in os.scandir(root) if e.is_dir() and e.name != "splits"]
    if not classes:
        raise DataError(f"FSS-1000: no class folders in {root}; expected layout: {LAYOUT}")
    logger.warning("FSS-1000: no split lists in %s; using a sorted 520/240/240-proportion split of %d classes "
                   "(not the published split: copy HSNet's data/splits/fss/*.txt there for comparable numbers)",
                   cand, len(classes))
    return fallback_split(classes), False


class FSS1000Dataset(SegDataset):
    """The images of one FSS-1000 split; see the module docstring."""

    def __init__(self, root: str | Path, split: str = "test", split_dir: str | Path | None = None) -> None:
        super().__init__(None)
        self.name = "fss1000"
        self.split = normalise_split(split)
        self.root = resolve_dir(root, "FSS-1000", LAYOUT)
        splits, self.published_split = fss_splits(self.root, split_dir)
        self.splits = splits
        self.class_names = splits["train"] + splits["val"] + splits["test"]
        offset = {"train": 0, "val": len(splits["train"]), "test": len(splits["train"]) + len(splits["val"])}
        self.split_class_ids = list(range(offset[self.split], offset[self.split] + len(splits[self.split])))
        self._items: list[tuple[str, int]] = []  # (class folder, class id) per image; id = "<class>/<stem>"
        self._ids: list[str] = []
        for c in self.split_class_ids:
            name = self.class_names[c]
            folder = self.root / name
            if not folder.is_dir():
                raise DataError(f"FSS-1000: class folder {folder} (listed in the {self.split} split) is missing")
            stems = sorted((os.path.splitext(e.name)[0] for e in os.scandir(folder) if e.name.lower().endswith(".jpg")),
                           key=_natural_key)
            if not stems:
                raise DataError(f"FSS-1000: no .jpg images in {folder}; expected layout: {LAYOUT}")
            for stem in stems:
                self._items.append((name, c))
                self._ids.append(f"{name}/{stem}")

    @property
    def text_names(self) -> list[str]:
        return [n.replace("_", " ") for n in self.class_names]  # folder names use underscores: "ab_wheel"

    def _image_path(self, i: int) -> Path:
        return self.root / f"{self._ids[i]}.jpg"

    def _label_path(self, i: int) -> Path:
        return self.root / f"{self._ids[i]}.png"

    def load_label(self, i: int) -> np.ndarray:
        raw = super().load_label(i)  # the binary mask; checks ``i``
        dtype = np.uint8 if self.num_classes < 255 else np.uint16  # the full 1000 classes need 16-bit labels
        return np.where(raw >= 128, self._items[i][1] + 1, 0).astype(dtype)

    def _compute_classes(self) -> list[list[int]]:
        # Every FSS-1000 image shows its folder's class; reading 10k masks to confirm it would be wasted time.
        return [[c] for _, c in self._items]
