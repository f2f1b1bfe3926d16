"""PASCAL-5i: VOC2012 images with the SBD-augmented label maps, four folds of five novel classes.

Layout (``root`` is the VOC2012 folder, or a folder holding ``VOC2012/`` as in HSNet's ``datapath``)::

    root/JPEGImages/<id>.jpg
    root/SegmentationClassAug/<id>.png       label map: 0 background, 1..20 VOC classes, 255 ignore
                                             (falls back to SegmentationClass/ with a warning)
    and one of two split-list layouts:
    (a) HSNet:  <split_dir>/{trn,val}/fold{i}.txt, lines "<id>__<class 1..20>"; split_dir defaults to
                root/splits/pascal (copy HSNet's data/splits/pascal there, or pass split_dir=)
    (b) VOC:    root/ImageSets/SegmentationAug/{train_aug,val}.txt or root/ImageSets/Segmentation/
                {train_aug,train,val}.txt, one id per line (masks are scanned for their classes)

Fold i's novel classes are VOC classes 5i+1..5i+5 (0-based 5i..5i+4). With HSNet lists the dataset holds
HSNet's (image, class) pairs: ``val`` = fold i's list, ``train`` = the other three folds' ``trn`` lists,
and ``classes_in`` returns the classes the lists pair with each image. ``test`` means ``val`` (as HSNet).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .base import SegDataset, normalise_split, resolve_dir
from .folder import read_id_list

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# The same classes as words, for text prompts.
VOC_TEXT_NAMES: tuple[str, ...] = tuple(
    {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}.get(n, n)
    for n in VOC_CLASSES
)
NUM_FOLDS = 4
LAYOUT = (
    "root/JPEGImages/*.jpg, root/SegmentationClassAug/*.png, and split lists either as HSNet's "
    "root/splits/pascal/{trn,val}/fold{i}.txt (lines '<id>__<class>'; or pass split_dir=) or as VOC's "
    "root/ImageSets/Segmentation/{train,val}.txt"
)


def pascal_fold_classes(fold: int) -> list[int]:
    """0-based novel classes of PASCAL-5i fold ``fold``: 5*fold .. 5*fold+4."""
    if not isinstance(fold, (int, np.integer)) or not 0 <= int(fold) < NUM_FOLDS:
        raise InputError(f"PASCAL-5i fold must be 0..{NUM_FOLDS - 1}, got {fold!r}")
    return list(range(5 * int(fold), 5 * int(fold) + 5))


def _find_voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DataError(f"PASCAL-5i: no JPEGImages/ folder in {root} (nor in {root}/VOC2012); expected layout: {LAYOUT}")


def read_hsnet_list(path: Path) -> list[tuple[str, int]]:
    """(image id, 0-based class) pairs of an HSNet list file with lines ``<id>__<1-based class>``."""
    pairs = []
    for n, line in enumerate(read_id_list(path), 1):
        img, sep, cls = line.rpartition("__")
        if not sep or not cls.isdigit() or not 1 <= int(cls) <= len(VOC_CLASSES):
            raise DataError(f"PASCAL-5i: {path} line {n} is {line!r}; expected '<image id>__<class 1..20>'")
        pairs.append((img, int(cls) - 1))
    return pairs


class PascalDataset(SegDataset):
    """PASCAL VOC2012 + SBD images for one split (and fold, with HSNet lists); see the module docstring."""

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        fold: int = 0,
        split_dir: str | Path | None = None,
        index_file: str | Path | None = None,
    ) -> None:
        super().__init__(index_file)
        self.name = "pascal5i"
        self.class_names = list(VOC_CLASSES)
        self.split = normalise_split(split)
        self.fold = fold
        pascal_fold_classes(fold)
        self.root = _find_voc_root(resolve_dir(root, "PASCAL-5i", LAYOUT))
        self.mask_dir = self.root / "SegmentationClassAug"
        if not self.mask_dir.is_dir():
            if (self.root / "SegmentationClass").is_dir():
                logger.warning("PASCAL-5i: %s has no SegmentationClassAug/; using SegmentationClass/ (VOC only, "
                               "no SBD: fewer training images than the benchmark uses)", self.root)
                self.mask_dir = self.root / "SegmentationClass"
            else:
                raise DataError(f"PASCAL-5i: no SegmentationClassAug/ folder in {self.root}; expected layout: {LAYOUT}")
        self._pairs: dict[str, list[int]] | None = None
        self.list_format, self._ids = self._read_lists(split_dir)
        if not self._ids:
            raise DataError(f"PASCAL-5i: the split lists for split {self.split!r} fold {fold} are empty")

    def _read_lists(self, split_dir: str | Path | None) -> tuple[str, list[str]]:
        hs = Path(split_dir).expanduser() if split_dir is not None else self.root / "splits" / "pascal"
        if split_dir is not None and not hs.is_dir():
            raise DataError(f"PASCAL-5i: split_dir {hs} does not exist; expected {hs}/{{trn,val}}/fold{{i}}.txt")
        if hs.is_dir():
            sub, folds = ("trn", [f for f in range(NUM_FOLDS) if f != self.fold]) if self.split == "train" else (
                "val", [self.fold])
            pairs: dict[str, list[int]] = {}
            for f in folds:
                path = hs / sub / f"fold{f}.txt"
                if not path.is_file():
                    raise DataError(f"PASCAL-5i: missing HSNet split list {path}; expected {hs}/{sub}/fold0..3.txt")
                for img, cls in read_hsnet_list(path):
                    pairs.setdefault(img, [])
                    if cls not in pairs[img]:
                        pairs[img].append(cls)
            self._pairs = pairs
            return "hsnet", list(pairs)
        sets = self.root / "ImageSets"
        names = ("train_aug", "train") if self.split == "train" else ("val",)
        for sub in ("SegmentationAug", "Segmentation"):
            for nm in names:
                path = sets / sub / f"{nm}.txt"
                if path.is_file():
                    logger.info("PASCAL-5i: using VOC split list %s", path)
                    return "voc", read_id_list(path)
        raise DataError(f"PASCAL-5i: no split lists in {self.root}: looked for {hs}/{{trn,val}}/fold{{i}}.txt (HSNet) "
                        f"and {sets}/Segmentation/{{train,val}}.txt (VOC); expected layout: {LAYOUT}")

    @property
    def text_names(self) -> list[str]:
        return list(VOC_TEXT_NAMES)

    def _image_path(self, i: int) -> Path:
        return self.root / "JPEGImages" / f"{self._ids[i]}.jpg"

    def _label_path(self, i: int) -> Path:
        return self.mask_dir / f"{self._ids[i]}.png"

    def _compute_classes(self) -> list[list[int]]:
        if self._pairs is not None:
            return [sorted(self._pairs[i]) for i in self._ids]
        return super()._compute_classes()
