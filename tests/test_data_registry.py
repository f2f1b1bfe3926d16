"""The benchmark registry: names, errors for unknown names/options and missing roots, generic builders."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import scene

from vlfss.data import build_benchmark, list_benchmarks
from vlfss.data.base import encode_png
from vlfss.data.benchmark import consecutive_folds
from vlfss.data.folder import write_folder_dataset
from vlfss.errors import DataError, InputError


def test_names():
    assert list_benchmarks() == sorted(["pascal5i", "coco20i", "fss1000", "synthetic", "synthetic-large", "folder",
                                        "hf"])


def test_unknown_name_lists_known_ones():
    with pytest.raises(DataError, match="known benchmarks: coco20i, folder, fss1000, hf, pascal5i, synthetic, synthet"):
        build_benchmark("ade20k", "/x")


def test_unknown_option():
    with pytest.raises(InputError, match=r"option\(s\) \['colour'\]"):
        build_benchmark("coco20i", "/x", colour=1)


@pytest.mark.parametrize("name", [n for n in list_benchmarks() if not n.startswith("synthetic")])  # they generate
def test_missing_root_says_what_was_expected(name, tmp_path):
    with pytest.raises(DataError, match="expected|does not exist") as e:
        build_benchmark(name, tmp_path / "nowhere", "test", 0)
    assert "nowhere" in str(e.value)


def test_consecutive_folds():
    assert consecutive_folds(20, 4) == [list(range(5 * i, 5 * i + 5)) for i in range(4)]
    assert consecutive_folds(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(InputError):
        consecutive_folds(3, 4)


def test_folder_and_hf_benchmarks(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(8):
        img, lab = scene(rng, [i % 8])
        items.append({"id": f"x{i}", "image": img, "mask": lab})
    write_folder_dataset(tmp_path / "f", items, [f"c{k}" for k in range(8)])
    b = build_benchmark("folder", tmp_path / "f", "train", 1)
    assert b.num_folds == 4 and b.novel_classes() == [2, 3] and b.episode_classes() == [0, 1, 4, 5, 6, 7]
    b = build_benchmark("folder", tmp_path / "f", "test", 0, folds=[[7], [0, 1]])
    assert b.num_folds == 2 and b.episode_classes() == [7] and b.base_classes(1) == [2, 3, 4, 5, 6, 7]

    from datasets import Dataset, Features, Image

    hf = Dataset.from_dict(
        {"image": [{"bytes": encode_png(it["image"]), "path": None} for it in items],
         "mask": [{"bytes": encode_png(it["mask"]), "path": None} for it in items]},
        features=Features({"image": Image(), "mask": Image()}),
    )
    b = build_benchmark("hf", hf, "test", 3, class_names=[f"c{k}" for k in range(8)], num_folds=4)
    assert b.novel_classes() == [6, 7] and b.dataset.images_of_class(6) == [6]


def test_synthetic_large_is_the_same_world_at_native_texture_size(tmp_path):
    from vlfss.data import build_benchmark

    large = build_benchmark("synthetic-large", tmp_path, "test", 0, n_images=4)
    small = build_benchmark("synthetic", tmp_path, "test", 0, n_images=4)
    assert large.dataset.load_image(0).shape[:2] == (288, 288)
    assert large.dataset.num_classes == small.dataset.num_classes
    assert large.novel_classes(0) == small.novel_classes(0)  # same folds
    assert (large.name, small.name) == ("synthetic-large", "synthetic")  # rows say which one was scored
