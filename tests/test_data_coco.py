"""COCO-20i: both published fold conventions, the HSNet-style layout, errors."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import save_jpg, save_png, scene

from vlfss.data import build_benchmark
from vlfss.data.coco import COCO_CLASSES, COCODataset, coco_fold_classes
from vlfss.errors import DataError, InputError

# PFENet/HSNet (use_split_coco, FWB) fold 0, by name.
INTERLEAVED_FOLD0 = [
    "person", "airplane", "boat", "parking meter", "dog", "elephant", "backpack", "suitcase", "sports ball",
    "skateboard", "wine glass", "spoon", "sandwich", "hot dog", "chair", "dining table", "mouse", "microwave",
    "refrigerator", "scissors",
]


def test_interleaved_folds():
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert [COCO_CLASSES[c] for c in coco_fold_classes(0)] == INTERLEAVED_FOLD0
    for i in range(4):  # PFENet: sub_val_list = range(i + 1, 81, 4) (1-based)
        assert [c + 1 for c in coco_fold_classes(i, "interleaved")] == list(range(i + 1, 81, 4))
    assert sorted(c for i in range(4) for c in coco_fold_classes(i)) == list(range(80))


def test_consecutive_folds():
    for i in range(4):  # fold i = 20i+1 .. 20i+20 (1-based)
        assert [c + 1 for c in coco_fold_classes(i, "consecutive")] == list(range(20 * i + 1, 20 * i + 21))
    assert [COCO_CLASSES[c] for c in coco_fold_classes(3, "consecutive")][:3] == ["dining table", "toilet", "tv"]
    with pytest.raises(InputError, match="convention"):
        coco_fold_classes(0, "random")
    with pytest.raises(InputError, match="fold"):
        coco_fold_classes(4)


def _coco(root, n=6):
    rng = np.random.default_rng(0)
    for sub in ("train2014", "val2014"):
        for k in range(n):
            name = f"COCO_{sub}_{k:012d}"
            img, lab = scene(rng, [(3 * k) % 80, (3 * k + 41) % 80])
            save_jpg(root / sub / f"{name}.jpg", img)
            save_png(root / "annotations" / sub / f"{name}.png", lab)


def test_layout_round_trip(tmp_path):
    _coco(tmp_path / "COCO2014")
    index = tmp_path / "index.json"
    ds = COCODataset(tmp_path, split="val", index_file=index)  # finds COCO2014/
    assert len(ds) == 6 and ds.image_id(0) == "COCO_val2014_000000000000"
    assert [ds.classes_in(k) for k in range(6)] == [sorted({(3 * k) % 80, (3 * k + 41) % 80}) for k in range(6)]
    assert index.is_file()
    image, label = ds.load(1)
    assert image.shape == (24, 32, 3) and (label[0] == 255).all() and set(np.unique(label)) == {0, 4, 45, 255}
    train = build_benchmark("coco20i", tmp_path, "train", 2, convention="consecutive", index_file=None)
    assert train.dataset.subset == "train2014" and train.novel_classes() == list(range(40, 60))
    assert train.episode_classes() == [c for c in range(80) if not 40 <= c < 60]


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        COCODataset(tmp_path / "missing")
    with pytest.raises(DataError, match="annotations"):
        COCODataset(tmp_path)
    (tmp_path / "annotations" / "val2014").mkdir(parents=True)
    with pytest.raises(DataError, match="val2014"):
        COCODataset(tmp_path, split="val")
    (tmp_path / "val2014").mkdir()
    save_png(tmp_path / "annotations" / "val2014" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="no image"):
        COCODataset(tmp_path, split="val")
