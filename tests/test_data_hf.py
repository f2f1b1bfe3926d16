"""The Hugging Face datasets reader: in memory and from save_to_disk folders; never the hub."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import scene

from vlfss.data.base import classes_of_label, encode_png
from vlfss.data.hf import HFDataset
from vlfss.errors import DataError

datasets = pytest.importorskip("datasets")
NAMES = ["a", "b", "c", "d"]


def _rows(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [scene(rng, [i % 4, (i + 2) % 4]) for i in range(n)]


def _dataset(rows, with_ids=True, class_label=True, extra=True):
    from datasets import ClassLabel, Dataset, Features, Image, List, Value

    cols = {
        "image": [{"bytes": encode_png(img), "path": None} for img, _ in rows],
        "mask": [{"bytes": encode_png(lab), "path": None} for _, lab in rows],
    }
    feats = {"image": Image(), "mask": Image()}
    if with_ids:
        cols["id"], feats["id"] = [f"r{i}" for i in range(len(rows))], Value("string")
    if extra:
        cols["caption"], feats["caption"] = [f"cap {i}" for i in range(len(rows))], Value("string")
        cols["class_ids"] = [classes_of_label(lab, 4) for _, lab in rows]
        feats["class_ids"] = List(ClassLabel(names=NAMES)) if class_label else List(Value("int64"))
    return Dataset.from_dict(cols, features=Features(feats))


def test_in_memory_and_disk_round_trip(tmp_path):
    rows = _rows()
    ds = _dataset(rows)
    for source in (ds, tmp_path / "saved"):
        if source == tmp_path / "saved":
            ds.save_to_disk(str(source))
        r = HFDataset(source)
        assert r.class_names == NAMES and len(r) == 5  # names from the ClassLabel feature
        for i, (img, lab) in enumerate(rows):
            image, label = r.load(i)
            assert (image == img).all() and (label == lab).all()
            assert r.image_id(i) == f"r{i}" and r.caption(i) == f"cap {i}"
            assert r.classes_in(i) == classes_of_label(lab, 4)


def test_scan_when_no_class_ids_and_names_argument():
    rows = _rows()
    r = HFDataset(_dataset(rows, with_ids=False, extra=False), class_names=NAMES)
    assert r.image_id(3) == "3" and r.caption(0) is None
    assert [r.classes_in(i) for i in range(5)] == [classes_of_label(lab, 4) for _, lab in rows]


def test_dataset_dict_split(tmp_path):
    dd = datasets.DatasetDict({"train": _dataset(_rows(3)), "test": _dataset(_rows(2, seed=1))})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(HFDataset(tmp_path / "dd", split="test")) == 2
    with pytest.raises(DataError, match="pass split"):
        HFDataset(tmp_path / "dd")
    with pytest.raises(DataError, match="available splits"):
        HFDataset(tmp_path / "dd", split="val")


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        HFDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        HFDataset(tmp_path / "empty")
    with pytest.raises(DataError, match="class_names"):
        HFDataset(_dataset(_rows(), class_label=False))
    no_mask = _dataset(_rows()).remove_columns(["mask"])
    with pytest.raises(DataError, match="mask"):
        HFDataset(no_mask)
    bad = _dataset(_rows())
    bad = bad.cast_column("image", datasets.Image(decode=False))
    bad = bad.map(lambda r: {"image": {"bytes": b"junk", "path": None}})
    with pytest.raises(DataError, match="row 0 column 'image'"):
        HFDataset(bad).load_image(0)
