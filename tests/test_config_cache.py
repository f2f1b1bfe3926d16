"""Strict configs and the feature cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from vlfss.cache import FeatureCache, content_hash
from vlfss.config import load_config
from vlfss.errors import ConfigError
from vlfss.segmenter import SegmenterConfig


@dataclass
class Inner:
    lr: float = 0.1
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    steps: int = 1
    data_root: str = "."
    inner: Inner = field(default_factory=Inner)


def test_yaml_base_overrides_and_paths(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\ninner:\n  lr: 0.5\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\ndata_root: data\ninner:\n  names: [a, b]\n")
    cfg = load_config(Outer, tmp_path / "exp.yaml", ["inner.lr=0.25"])
    assert cfg.steps == 5 and cfg.inner.lr == 0.25 and cfg.inner.names == ["a", "b"]
    assert cfg.data_root == str((tmp_path / "data").resolve())


@pytest.mark.parametrize("override, match", [
    (["stpes=3"], "unknown config key"),
    (["inner.lrr=3"], "inner.lrr"),
    (["steps=abc"], "'steps'"),
    (["inner.lr=.nan"], "NaN"),
    (["steps"], "key=value"),
])
def test_bad_config_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, None, override)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_segmenter_config_defaults_load():
    cfg = load_config(SegmenterConfig, None, ["training_free.proto_temperature=0.1", "mode=training-free"])
    assert cfg.training_free.proto_temperature == 0.1
    with pytest.raises(ConfigError):
        load_config(SegmenterConfig, None, ["mode=sometimes"])


def test_cache_lru_hits_and_disk(tmp_path):
    c = FeatureCache(max_items=2, disk_dir=tmp_path)
    keys = [FeatureCache.key("m", "plain", (8, 8), str(i)) for i in range(3)]
    for i, k in enumerate(keys):
        c.put(k, {"z": torch.full((2,), float(i))})
    assert c.get(keys[2])["z"][0] == 2 and c.hits == 1
    c.clear()
    fresh = FeatureCache(max_items=2, disk_dir=tmp_path)
    assert fresh.get(keys[0])["z"][0] == 0  # from disk
    assert fresh.get("other") is None and fresh.misses == 1
    broken = FeatureCache(disk_dir=tmp_path)
    broken._path(keys[0]).write_bytes(b"broken")
    assert broken.get(keys[0]) is None and broken.misses == 1  # a damaged file is a miss, not a crash


def test_content_hash_depends_on_pixels_and_shape():
    import numpy as np

    a = np.zeros((4, 4, 3), np.uint8)
    assert content_hash(a) == content_hash(a.copy())
    assert content_hash(a) != content_hash(np.zeros((2, 8, 3), np.uint8))
    b = a.copy()
    b[0, 0, 0] = 1
    assert content_hash(a) != content_hash(b)

