"""The synthetic benchmark on disk: both formats equal generate_scene, splits disjoint, reuse by marker."""

from __future__ import annotations

import numpy as np
import pytest

from vlfss.data import synthetic_store as store
from vlfss.data.synthetic import SyntheticConfig, fold_classes, generate_scene
from vlfss.data.synthetic_store import (
    MARKER,
    SPLIT_OFFSETS,
    SyntheticBenchmark,
    materialize_synthetic,
    synthetic_dataset,
)
from vlfss.errors import InputError

SIZE = 32  # small images keep this fast


@pytest.mark.parametrize("fmt", ["hf", "folder"])
def test_materialised_split_equals_generator(tmp_path, fmt):
    ds = synthetic_dataset("train", n_images=6, seed=3, fmt=fmt, root=tmp_path, image_size=SIZE)
    assert len(ds) == 6 and ds.class_names[0] == "stripes" and ds.name == "synthetic"
    for i in range(6):
        sc = generate_scene(3, SPLIT_OFFSETS["train"] + i, SyntheticConfig(image_size=SIZE))
        image, label = ds.load(i)
        assert (image == sc.image).all() and (label == sc.mask).all()
        assert ds.classes_in(i) == sc.class_ids and ds.caption(i) == sc.caption
        assert ds.image_id(i) == f"train_{i:07d}"


def test_formats_agree_and_splits_do_not_overlap(tmp_path):
    hf = synthetic_dataset("test", n_images=5, fmt="hf", root=tmp_path, image_size=SIZE)
    fo = synthetic_dataset("test", n_images=5, fmt="folder", root=tmp_path, image_size=SIZE)
    tr = synthetic_dataset("train", n_images=5, fmt="hf", root=tmp_path, image_size=SIZE)
    assert hf.ids() == fo.ids() and not set(hf.ids()) & set(tr.ids())
    for i in range(5):
        assert all((a == b).all() for a, b in zip(hf.load(i), fo.load(i), strict=True))
        assert not (hf.load_image(i) == tr.load_image(i)).all()


def test_reuse_and_recovery(tmp_path, monkeypatch):
    path = materialize_synthetic(tmp_path, "test", 4, 0, "folder", SIZE)
    assert (path / MARKER).is_file() and path == store.synthetic_path(tmp_path, "test", 4, 0, "folder", SIZE)

    def boom(args):
        raise AssertionError("regenerated a complete materialisation")

    monkeypatch.setattr(store, "_render", boom)
    assert materialize_synthetic(tmp_path, "test", 4, 0, "folder", SIZE) == path  # reused, nothing rendered
    monkeypatch.undo()
    (path / MARKER).unlink()  # as if a writer had crashed before finishing
    (path / "images" / "test_0000000.png").unlink()
    again = materialize_synthetic(tmp_path, "test", 4, 0, "folder", SIZE)
    assert again == path and (path / MARKER).is_file() and (path / "images" / "test_0000000.png").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_default_root_is_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VLFSS_CACHE", str(tmp_path / "cache"))
    path = materialize_synthetic(None, "val", 2, 0, "hf", SIZE)
    assert path.is_relative_to(tmp_path / "cache")


def test_parallel_workers_match_serial(tmp_path):
    a = synthetic_dataset("train", n_images=4, fmt="hf", root=tmp_path / "a", image_size=SIZE, workers=2)
    b = synthetic_dataset("train", n_images=4, fmt="hf", root=tmp_path / "b", image_size=SIZE, workers=1)
    assert all((a.load_image(i) == b.load_image(i)).all() for i in range(4))


def test_benchmark_and_bad_arguments(tmp_path):
    bench = SyntheticBenchmark("test", fold=2, n_images=3, root=tmp_path, image_size=SIZE)
    assert bench.num_folds == 4 and bench.novel_classes() == fold_classes(2) == [10, 11, 12, 13, 14]
    assert bench.base_classes(0) == list(range(5, 20)) and bench.episode_classes() == fold_classes(2)
    with pytest.raises(InputError, match="fmt"):
        materialize_synthetic(tmp_path, "test", 3, fmt="parquet")
    with pytest.raises(InputError, match="n_images"):
        materialize_synthetic(tmp_path, "test", 0)
    with pytest.raises(InputError, match="fold"):
        SyntheticBenchmark("test", fold=4, n_images=3, root=tmp_path, image_size=SIZE)
    assert np.array_equal(bench.dataset.load_image(0), generate_scene(0, SPLIT_OFFSETS["test"],
                                                                      SyntheticConfig(image_size=SIZE)).image)


def test_changed_generator_invalidates_the_cache(tmp_path, monkeypatch):
    path = materialize_synthetic(tmp_path, "test", 2, 0, "hf", SIZE)
    before = (path / MARKER).read_text()
    monkeypatch.setattr(store, "_generator_fingerprint", lambda *a: "different")
    assert materialize_synthetic(tmp_path, "test", 2, 0, "hf", SIZE) == path
    assert (path / MARKER).read_text() != before and "different" in (path / MARKER).read_text()
