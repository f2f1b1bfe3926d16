"""COCO-20i: COCO 2014 with pre-rendered label maps, four folds of twenty novel classes.

Layout (as HSNet's ``COCO2014`` folder; ``root`` may be that folder or hold ``COCO2014/``)::

    root/train2014/<name>.jpg               root/val2014/<name>.jpg
    root/annotations/train2014/<name>.png   root/annotations/val2014/<name>.png
        label map: 0 background, c+1 for COCO class c (0-based over the 80 classes below), 255 ignore

Split ``train`` reads train2014, ``val``/``test`` read val2014. The classes of each image are found by
scanning its label map once; pass ``index_file`` to cache that scan (COCO has 120k masks).

Two fold conventions, both published (1-based class numbers over the 80 classes):
``interleaved``: fold i = {4k + i + 1 : k = 0..19} (FWB's split; HSNet, PFENet with ``use_split_coco``);
``consecutive``: fold i = {20i + 1 .. 20i + 20} (PFENet without ``use_split_coco``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .base import SegDataset, normalise_split, resolve_dir

logger = logging.getLogger(__name__)

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
NUM_FOLDS = 4
CONVENTIONS = ("interleaved", "consecutive")
LAYOUT = (
    "root/{train2014,val2014}/<name>.jpg and root/annotations/{train2014,val2014}/<name>.png label maps "
    "(0 background, c+1 for COCO class c, 255 ignore), as HSNet's COCO2014 folder"
)


def coco_fold_classes(fold: int, convention: str = "interleaved") -> list[int]:
    """0-based novel classes of COCO-20i fold ``fold`` under ``convention`` (see the module docstring)."""
    if not isinstance(fold, (int, np.integer)) or not 0 <= int(fold) < NUM_FOLDS:
        raise InputError(f"COCO-20i fold must be 0..{NUM_FOLDS - 1}, got {fold!r}")
    if convention == "interleaved":
        return [4 * k + int(fold) for k in range(20)]
    if convention == "consecutive":
        return list(range(20 * int(fold), 20 * int(fold) + 20))
    raise InputError(f"COCO-20i convention must be one of {list(CONVENTIONS)}, got {convention!r}")


def _find_coco_root(root: Path) -> Path:
    for cand in (root, root / "COCO2014"):
        if (cand / "annotations").is_dir():
            return cand
    raise DataError(f"COCO-20i: no annotations/ folder in {root} (nor in {root}/COCO2014); expected layout: {LAYOUT}")


class COCODataset(SegDataset):
    """COCO 2014 images of one split with label-map PNGs; see the module docstring."""

    def __init__(self, root: str | Path, split: str = "val", index_file: str | Path | None = None) -> None:
        super().__init__(index_file)
        self.name = "coco20i"
        self.class_names = list(COCO_CLASSES)
        self.split = normalise_split(split)
        self.root = _find_coco_root(resolve_dir(root, "COCO-20i", LAYOUT))
        self.subset = "train2014" if self.split == "train" else "val2014"
        img_dir, ann_dir = self.root / self.subset, self.root / "annotations" / self.subset
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DataError(f"COCO-20i: missing folder {d} for split {self.split!r}; expected layout: {LAYOUT}")
        masks = sorted(os.path.splitext(e.name)[0] for e in os.scandir(ann_dir) if e.name.lower().endswith(".png"))
        images = {os.path.splitext(e.name)[0] for e in os.scandir(img_dir) if e.name.lower().endswith(".jpg")}
        no_image = [m for m in masks if m not in images]
        if no_image:
            raise DataError(f"COCO-20i: {len(no_image)} label map(s) in {ann_dir} have no image in {img_dir} "
                            f"(e.g. {no_image[:3]})")
        if not masks:
            raise DataError(f"COCO-20i: no label-map PNGs in {ann_dir}; expected layout: {LAYOUT}")
        self._ids = masks
        self._img_dir, self._ann_dir = img_dir, ann_dir

    def _image_path(self, i: int) -> Path:
        return self._img_dir / f"{self._ids[i]}.jpg"

    def _label_path(self, i: int) -> Path:
        return self._ann_dir / f"{self._ids[i]}.png"
