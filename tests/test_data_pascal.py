"""PASCAL-5i: the published folds, HSNet and VOC split-list layouts, layout errors."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import save_jpg, save_png, scene

from vlfss.data import build_benchmark
from vlfss.data.pascal import VOC_CLASSES, PascalDataset, pascal_fold_classes
from vlfss.errors import DataError, InputError

PUBLISHED = {
    0: ["aeroplane", "bicycle", "bird", "boat", "bottle"],
    1: ["bus", "car", "cat", "chair", "cow"],
    2: ["diningtable", "dog", "horse", "motorbike", "person"],
    3: ["pottedplant", "sheep", "sofa", "train", "tvmonitor"],
}


def test_folds_equal_published_lists():
    for fold, names in PUBLISHED.items():
        assert [VOC_CLASSES[c] for c in pascal_fold_classes(fold)] == names
    with pytest.raises(InputError, match="fold"):
        pascal_fold_classes(4)


def _voc(root, n=12, seed=0):
    """VOC2012-like folder: image k holds classes {k % 20, (k + 7) % 20}; palette PNG masks with 255 borders."""
    rng = np.random.default_rng(seed)
    ids, labels = [], {}
    for k in range(n):
        iid = f"2008_{k:06d}"
        img, lab = scene(rng, [k % 20, (k + 7) % 20])
        save_jpg(root / "JPEGImages" / f"{iid}.jpg", img)
        save_png(root / "SegmentationClassAug" / f"{iid}.png", lab, palette=True)
        ids.append(iid)
        labels[iid] = lab
    return ids, labels


def _hsnet_lists(root, ids):
    """HSNet lists: fold f's file lists (image, class) pairs whose class is in fold f."""
    for sub in ("trn", "val"):
        for f in range(4):
            lines = []
            for k, iid in enumerate(ids):
                for c in (k % 20, (k + 7) % 20):
                    if c // 5 == f:
                        lines.append(f"{iid}__{c + 1:02d}")
            path = root / "splits" / "pascal" / sub / f"fold{f}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")


def test_hsnet_layout(tmp_path):
    root = tmp_path / "VOC2012"
    ids, labels = _voc(root)
    _hsnet_lists(root, ids)
    val = PascalDataset(tmp_path, split="test", fold=1)  # datapath holding VOC2012/, test == val
    in_fold1 = {i for i in range(12) if 1 in {i % 20 // 5, (i + 7) % 20 // 5}}
    assert val.list_format == "hsnet" and len(val) == len(in_fold1)
    for i in range(len(val)):
        assert set(val.classes_in(i)) <= set(pascal_fold_classes(1))
        image, label = val.load(i)
        assert image.shape == (24, 32, 3) and (label == labels[val.image_id(i)]).all()
        assert (label[0] == 255).all()  # ignore kept
    train = PascalDataset(root, split="train", fold=1)
    assert all(not set(train.classes_in(i)) & set(pascal_fold_classes(1)) for i in range(len(train)))
    expected = {iid for k, iid in enumerate(ids) if {k % 20 // 5, (k + 7) % 20 // 5} - {1}}
    assert set(train.ids()) == expected


def test_voc_layout_scans_masks(tmp_path):
    ids, labels = _voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[:5]) + "\n")
    bench = build_benchmark("pascal5i", tmp_path, "val", 0, index_file=None)
    ds = bench.dataset
    assert ds.list_format == "voc" and len(ds) == 5
    assert [ds.classes_in(i) for i in range(5)] == [sorted({k % 20, (k + 7) % 20}) for k in range(5)]
    assert bench.novel_classes() == [0, 1, 2, 3, 4] and len(bench.base_classes()) == 15
    assert ds.text_names[10] == "dining table"


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        PascalDataset(tmp_path / "missing")
    with pytest.raises(DataError, match="JPEGImages"):
        PascalDataset(tmp_path)
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match="SegmentationClassAug"):
        PascalDataset(tmp_path)
    (tmp_path / "SegmentationClassAug").mkdir()
    with pytest.raises(DataError, match=r"splits/pascal.*ImageSets/Segmentation"):
        PascalDataset(tmp_path)
    (tmp_path / "splits" / "pascal" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match="fold2.txt"):
        PascalDataset(tmp_path, split="val", fold=2)
    (tmp_path / "splits" / "pascal" / "val" / "fold2.txt").write_text("2008_000001__42\n")
    with pytest.raises(DataError, match="line 1"):
        PascalDataset(tmp_path, split="val", fold=2)
