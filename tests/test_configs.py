"""The YAML files under configs/: each loads strictly into its dataclass, and none restates a value it would get
anyway (the dataclasses are the one home of every default; a file holds only what differs from its base)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vlfss.config import load_config, to_dict
from vlfss.engine.config import PretrainConfig, RobustConfig, TrainConfig, check_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))
# A fold file names its fold even where it equals the inherited one (fold 0), so the fold files read alike.
IDENTITY_KEYS = frozenset({"data.fold"})


def _cls(path: Path) -> type:
    """The tiny-CLIP pretraining stages are PretrainConfig files, its robust distillation a RobustConfig file;
    every other file is a TrainConfig."""
    if path.stem == "tiny_clip_robust":
        return RobustConfig
    return PretrainConfig if path.stem.startswith("tiny_clip") else TrainConfig


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a nested mapping (an empty mapping is a leaf)."""
    if not isinstance(d, dict) or (not d and prefix):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def restated(path: Path, cls: type) -> list[str]:
    """Keys ``path`` sets to the value it would have without them: its base file's, or the dataclass default."""
    raw = yaml.safe_load(path.read_text()) or {}
    base = raw.pop("base", None)
    inherited = load_config(cls, (path.parent / base).resolve()) if base else cls()
    full, before = _flatten(to_dict(load_config(cls, path))), _flatten(to_dict(inherited))
    return [f"{k}: {full[k]!r}" for k in _flatten(raw) if k in before and full[k] == before[k]]


def test_the_config_folder_is_found():
    assert CONFIGS / "base.yaml" in FILES and any(p.parent.name == "synthetic" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads_strictly_and_passes_the_semantic_checks(path):
    cfg = load_config(_cls(path), path)  # an unknown key or a wrong type raises ConfigError
    if isinstance(cfg, TrainConfig):
        check_config(cfg)
        if re.fullmatch(r"fold\d", path.stem):
            assert cfg.data.fold == int(path.stem[-1])
        if cfg.data.benchmark != "synthetic":  # the synthetic reader's options must not leak into real datasets
            assert "image_size" not in cfg.data.options


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_no_config_restates_what_it_inherits(path):
    extra = [k for k in restated(path, _cls(path)) if k.split(":")[0] not in IDENTITY_KEYS]
    assert extra == [], f"{path.relative_to(CONFIGS)} restates inherited values (delete them): {extra}"


def test_base_yaml_restates_no_dataclass_default():
    assert restated(CONFIGS / "base.yaml", TrainConfig) == []
    assert "base" not in yaml.safe_load((CONFIGS / "base.yaml").read_text())  # it extends the dataclasses only


def test_the_restatement_check_finds_a_planted_one(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 1000\nlr: 0.5\nval: {episodes: 60, shots: 2}\n")
    assert sorted(restated(tmp_path / "base.yaml", TrainConfig)) == ["steps: 1000", "val.episodes: 60"]
    (tmp_path / "exp.yaml").write_text("base: base.yaml\nlr: 0.5\nseed: 0\nsteps: 10\n")
    assert sorted(restated(tmp_path / "exp.yaml", TrainConfig)) == ["lr: 0.5", "seed: 0"]  # base's, default
