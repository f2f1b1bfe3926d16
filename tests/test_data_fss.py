"""FSS-1000: the 520/240/240 class split, HSNet class ids, binary masks to c+1."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from datagen import save_jpg, save_png

from vlfss.data import build_benchmark
from vlfss.data.fss import SPLIT_SIZES, FSS1000Dataset, fallback_split
from vlfss.errors import DataError


def test_split_sizes_and_fallback():
    assert SPLIT_SIZES == {"train": 520, "val": 240, "test": 240}
    names = [f"class_{i:04d}" for i in range(1000)][::-1]
    sp = fallback_split(names)
    assert [len(sp[s]) for s in ("train", "val", "test")] == [520, 240, 240]
    assert sp["train"] + sp["val"] + sp["test"] == sorted(names)  # sorted, disjoint, deterministic
    assert fallback_split(names[::-1]) == sp


def _fss(root, classes, n=3):
    rng = np.random.default_rng(0)
    for name in classes:
        for k in range(1, n + 1):
            save_jpg(root / name / f"{k}.jpg", rng.integers(0, 256, (16, 20, 3), dtype=np.uint8))
            m = np.zeros((16, 20), np.uint8)
            m[4:10, 5:12] = 255
            m[0, 0] = 200  # >= 128 counts as foreground, as HSNet thresholds
            save_png(root / name / f"{k}.png", m)


def _lists(root, splits):
    (root / "splits" / "fss").mkdir(parents=True)
    for s, names in splits.items():
        (root / "splits" / "fss" / f"{s}.txt").write_text("\n".join(names) + "\n")


def test_reader_with_split_files(tmp_path):
    _fss(tmp_path, ["ab_wheel", "zebra", "bee", "owl"])
    _lists(tmp_path, {"trn": ["zebra", "ab_wheel"], "val": ["owl"], "test": ["bee"]})
    bench = build_benchmark("fss1000", tmp_path, "test")
    ds = bench.dataset
    assert ds.published_split and ds.class_names == ["ab_wheel", "zebra", "owl", "bee"]  # sorted within split
    assert ds.ids() == ["bee/1", "bee/2", "bee/3"] and bench.novel_classes() == [3] and bench.base_classes() == [0, 1]
    image, label = ds.load(0)
    assert image.shape == (16, 20, 3) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 4} and label[0, 0] == 4 and (label[4:10, 5:12] == 4).all()
    assert ds.classes_in(2) == [3] and ds.images_of_class(3) == [0, 1, 2]
    train = FSS1000Dataset(tmp_path, "trn")
    assert [train.classes_in(i) for i in range(len(train))] == [[0]] * 3 + [[1]] * 3
    assert train.text_names[0] == "ab wheel"


def test_natural_image_order(tmp_path):
    _fss(tmp_path, ["a"], n=11)
    _lists(tmp_path, {"trn": [], "val": [], "test": ["a"]})
    assert FSS1000Dataset(tmp_path, "test").ids()[:3] == ["a/1", "a/2", "a/3"] and FSS1000Dataset(
        tmp_path, "test").ids()[-1] == "a/11"


def test_many_classes_use_16_bit_labels(tmp_path):
    _fss(tmp_path, ["t0", "t1"], n=2)
    _lists(tmp_path, {"trn": [f"train{i:03d}" for i in range(300)], "val": [], "test": ["t0", "t1"]})
    ds = FSS1000Dataset(tmp_path, "test")
    label = ds.load_label(2)
    assert ds.num_classes == 302 and label.dtype == np.uint16 and label.max() == 302 and ds.ignore_label == 65535
    assert ds.classes_in(2) == [301] and ds.load_class_mask(2, 301).max() == 1


def test_fallback_warns(tmp_path, caplog):
    _fss(tmp_path, [f"c{i}" for i in range(5)], n=2)
    with caplog.at_level(logging.WARNING, logger="vlfss.data.fss"):
        ds = FSS1000Dataset(tmp_path, "train")
    assert "no split lists" in caplog.text and not ds.published_split
    assert ds.splits == fallback_split([f"c{i}" for i in range(5)])


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FSS1000Dataset(tmp_path / "missing")
    with pytest.raises(DataError, match="no class folders"):
        FSS1000Dataset(tmp_path)
    _fss(tmp_path, ["a"], n=2)
    (tmp_path / "splits" / "fss").mkdir(parents=True)
    (tmp_path / "splits" / "fss" / "trn.txt").write_text("a\n")
    with pytest.raises(DataError, match="incomplete split lists"):
        FSS1000Dataset(tmp_path)
    (tmp_path / "splits" / "fss" / "val.txt").write_text("\n")
    (tmp_path / "splits" / "fss" / "test.txt").write_text("b\n")
    with pytest.raises(DataError, match="b .*missing"):
        FSS1000Dataset(tmp_path, "test")
