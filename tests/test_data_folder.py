"""The folder format: writer/reader round trip and clear layout errors."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import save_png, scene

from vlfss.data.base import classes_of_label
from vlfss.data.folder import FolderDataset, write_folder_dataset
from vlfss.data.image import decode_rgb, encode_jpeg
from vlfss.errors import DataError, InputError

NAMES = ["cat", "dog", "tree"]


def _items(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, lab = scene(rng, [i % 3, (i + 1) % 3] if i % 2 else [i % 3])
        out.append({"id": f"im_{i}", "image": img, "mask": lab, "caption": f"picture {i}",
                    "split": "train" if i < 4 else "test"})
    return out


def test_round_trip(tmp_path):
    items = _items()
    write_folder_dataset(tmp_path / "ds", items, NAMES)
    ds = FolderDataset(tmp_path / "ds")
    assert ds.class_names == NAMES and len(ds) == 6
    for i, it in enumerate(sorted(items, key=lambda x: x["id"])):
        image, label = ds.load(i)
        assert ds.image_id(i) == it["id"]
        assert (image == it["image"]).all() and (label == it["mask"]).all()
        assert ds.caption(i) == it["caption"]
        assert ds.classes_in(i) == classes_of_label(it["mask"], 3)
    train = FolderDataset(tmp_path / "ds", split="train")
    test = FolderDataset(tmp_path / "ds", split="test")
    assert train.ids() == ["im_0", "im_1", "im_2", "im_3"] and test.ids() == ["im_4", "im_5"]
    assert test.images_of_class(1) == [i for i in range(2) if 1 in test.classes_in(i)]


def test_classes_from_scan_without_meta(tmp_path):
    items = _items()
    write_folder_dataset(tmp_path / "ds", items, NAMES, image_format="jpg")
    (tmp_path / "ds" / "meta.jsonl").unlink()
    ds = FolderDataset(tmp_path / "ds")
    assert [ds.classes_in(i) for i in range(6)] == [classes_of_label(it["mask"], 3) for it in items]
    img, _ = ds.load(0)
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img, decode_rgb(encode_jpeg(items[0]["image"])))  # exactly the stored (lossy) JPEG
    assert ds.caption(0) is None


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="classes.txt"):
        FolderDataset(tmp_path / "nowhere")
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(DataError, match="classes.txt"):
        FolderDataset(root)
    (root / "classes.txt").write_text("a\n\nb\n")
    with pytest.raises(DataError, match="blank"):
        FolderDataset(root)
    (root / "classes.txt").write_text("a\nb\n")
    (root / "images").mkdir()
    with pytest.raises(DataError, match="masks/"):
        FolderDataset(root)
    (root / "masks").mkdir()
    img, lab = scene(np.random.default_rng(0), [0])
    save_png(root / "images" / "x.png", img)
    with pytest.raises(DataError, match="without masks/<id>.png"):
        FolderDataset(root)
    save_png(root / "masks" / "x.png", lab)
    assert len(FolderDataset(root)) == 1
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("x\n")
    with pytest.raises(DataError, match=r"available splits: \['train'\]"):
        FolderDataset(root, split="val")
    (root / "meta.jsonl").write_text('{"id": "x", "class_ids": [7]}\n')
    with pytest.raises(DataError, match="class_ids"):
        FolderDataset(root)


def test_writer_rejects_bad_items(tmp_path):
    img, lab = scene(np.random.default_rng(0), [0])
    with pytest.raises(InputError, match="id"):
        write_folder_dataset(tmp_path, [{"id": "../evil", "image": img, "mask": lab}], NAMES)
    with pytest.raises(InputError, match="mask"):
        write_folder_dataset(tmp_path, [{"id": "a", "image": img, "mask": lab[:3]}], NAMES)
    with pytest.raises(InputError, match="duplicate"):
        write_folder_dataset(tmp_path, [{"id": "a", "image": img, "mask": lab}] * 2, NAMES)
