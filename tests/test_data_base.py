"""Image/label decoding, the class index of SegDataset, and the cache-dir rule."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import memory_dataset
from PIL import Image

from vlfss.data.base import classes_of_label, default_cache_dir, normalise_split, read_label, read_rgb
from vlfss.errors import DataError, InputError


def test_read_rgb_converts_every_common_mode(tmp_path):
    gray = np.full((4, 5), 100, np.uint8)
    Image.fromarray(gray).save(tmp_path / "l.png")
    out = read_rgb(tmp_path / "l.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out == 100).all()

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_rgb(tmp_path / "rgba.png")
    assert out.shape == (4, 5, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()

    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(tmp_path / "i16.png")
    out = read_rgb(tmp_path / "i16.png")
    assert out.shape == (3, 3, 3) and (out == 255).all()

    pal = Image.fromarray(np.array([[0, 1]], np.uint8)).convert("P")
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    pal.putdata([0, 1])
    pal.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png").tolist() == [[[10, 20, 30], [40, 50, 60]]]

    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(tmp_path / "b.png")
    assert read_rgb(tmp_path / "b.png").tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_read_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="junk.jpg"):
        read_rgb(tmp_path / "junk.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.png"):
        read_rgb(tmp_path / "trunc.png")
    with pytest.raises(DataError, match="empty.png"):
        (tmp_path / "empty.png").write_bytes(b"")
        read_label(tmp_path / "empty.png")


def test_read_label_modes(tmp_path):
    lab = np.array([[0, 3, 255]], np.uint8)
    img = Image.fromarray(lab).convert("P")
    img.putpalette([i % 256 for i in range(768)])
    img.putdata(lab.ravel().tolist())
    img.save(tmp_path / "p.png")
    assert read_label(tmp_path / "p.png").tolist() == [[0, 3, 255]]  # palette indices, not colours
    Image.fromarray(np.repeat(lab[..., None], 3, 2)).save(tmp_path / "grey_rgb.png")
    assert read_label(tmp_path / "grey_rgb.png").tolist() == [[0, 3, 255]]
    Image.fromarray(np.array([[[1, 2, 3]]], np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png"):
        read_label(tmp_path / "colour.png")
    Image.fromarray(np.array([[300]], np.uint16)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match="big.png"):
        read_label(tmp_path / "big.png")


def test_classes_of_label():
    lab = np.array([[0, 1, 255], [4, 4, 0]], np.uint8)
    assert classes_of_label(lab, 5) == [0, 3]
    with pytest.raises(DataError, match="label value"):
        classes_of_label(lab, 3)
    lab16 = np.array([[0, 300, 65535]], np.uint16)
    assert classes_of_label(lab16, 400) == [299]


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLFSS_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("VLFSS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "vlfss"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vlfss"


def test_normalise_split():
    assert normalise_split("trn") == "train" and normalise_split("VAL") == "val" and normalise_split("test") == "test"
    with pytest.raises(InputError, match="split"):
        normalise_split("dev")


def test_class_index_is_computed_once_and_cached_on_disk(tmp_path):
    ds = memory_dataset(n=12, num_classes=4)
    expected = [classes_of_label(ds._labels[i], 4) for i in range(12)]
    assert [ds.classes_in(i) for i in range(12)] == expected
    reads = ds.label_reads
    assert [ds.classes_in(i) for i in range(12)] == expected and ds.label_reads == reads  # cached in memory
    for c in range(4):
        assert ds.images_of_class(c) == [i for i in range(12) if c in expected[i]]
    # On disk: a second instance with the same ids reads the index file instead of the masks.
    index = tmp_path / "idx.json"
    a = memory_dataset(n=12, num_classes=4)
    a.use_index_file(index)
    a.classes_in(0)
    assert index.is_file()
    b = memory_dataset(n=12, num_classes=4)
    b.use_index_file(index)
    assert [b.classes_in(i) for i in range(12)] == expected and b.label_reads == 0
    # Another image list invalidates it.
    c = memory_dataset(n=10, num_classes=4)
    c.use_index_file(index)
    c.classes_in(0)
    assert c.label_reads == 10


def test_index_errors():
    ds = memory_dataset(n=5, num_classes=3)
    with pytest.raises(InputError, match="out of range"):
        ds.classes_in(5)
    with pytest.raises(InputError, match="class id 3"):
        ds.images_of_class(3)
    with pytest.raises(DataError, match="nope"):
        ds.index_of("nope")
    assert ds.index_of("img003") == 3


def test_load_class_mask_keeps_ignore():
    ds = memory_dataset(n=3, num_classes=3)
    i = 0
    c = ds.classes_in(i)[0]
    m = ds.load_class_mask(i, c)
    lab = ds._labels[i]
    assert set(np.unique(m).tolist()) <= {0, 1, 255}
    assert ((m == 1) == (lab == c + 1)).all() and ((m == 255) == (lab == 255)).all()
