"""The head's file format: round trip, refusals with one-line errors, the v1 -> v2 upgrade, the shipped files."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlfss.errors import ModelError
from vlfss.modeling.backbones import ASSETS
from vlfss.modeling.config import HeadConfig, TrainingFreeConfig
from vlfss.modeling.head_file import HEAD_FORMAT, load_head, new_head, read_head_file, save_head

REPO = Path(__file__).resolve().parent.parent


def _upgrade_script():
    spec = importlib.util.spec_from_file_location("upgrade_heads", REPO / "eval" / "upgrade_heads.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rewrite(path: Path, out: Path, meta: dict, state: dict | None = None) -> Path:
    """``path``'s tensors (or ``state``) under other metadata."""
    state = state if state is not None else read_head_file(path)[1]
    save_file(state, str(out), metadata={"vlfss": json.dumps(meta)})
    return out


def _as_v1(meta: dict) -> dict:
    """The metadata a vlfss-head/1 file had for the same head: the prior's settings as six flat fields."""
    head = dict(meta["head"])
    prior = head.pop("prior")
    head.update(prior_proto_features=prior["proto_features"], prior_shot_pooling="mean", prior_cell_norm=True,
                prior_metric=prior["metric"], prior_shrinkage=prior["shrinkage"],
                prior_mahalanobis_scale=prior["mahalanobis_scale"])
    return {**meta, "format": "vlfss-head/1", "head": head}


@pytest.fixture()
def saved(tiny_backbone, tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = HeadConfig(use_for=["text"], prior=TrainingFreeConfig(proto_features="tap0", shrinkage=0.7))
    return save_head(new_head(tiny_backbone, cfg), tmp_path / "head.safetensors", tiny_backbone.model_id, "plain",
                     extra={"fold": 2})


def test_round_trip_keeps_tensors_config_and_variant(tiny_backbone, saved):
    meta, state = read_head_file(saved)
    assert meta["format"] == HEAD_FORMAT and meta["fold"] == 2
    assert meta["head"]["prior"]["shrinkage"] == 0.7  # the prior is one nested TrainingFreeConfig
    head, variant = load_head(saved, tiny_backbone)
    assert variant == "plain" and not head.training
    assert head.cfg == HeadConfig(use_for=["text"], prior=TrainingFreeConfig(proto_features="tap0", shrinkage=0.7))
    assert head.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in head.state_dict().items())


def test_a_head_for_another_backbone_is_refused(tiny_backbone, saved, tmp_path):
    meta, _ = read_head_file(saved)
    other = _rewrite(saved, tmp_path / "other.safetensors", {**meta, "backbone": "open_clip:ViT-B-16@openai"})
    with pytest.raises(ModelError, match="trained on 'open_clip:ViT-B-16@openai'"):
        load_head(other, tiny_backbone)


def test_an_old_format_file_gets_one_line_naming_it_and_the_fix(tiny_backbone, saved, tmp_path):
    old = _rewrite(saved, tmp_path / "old.safetensors", _as_v1(read_head_file(saved)[0]))
    with pytest.raises(ModelError) as e:
        load_head(old, tiny_backbone)
    msg = str(e.value)
    assert "\n" not in msg and str(old) in msg and "vlfss-head/1" in msg and "eval/upgrade_heads.py" in msg


def test_the_upgrade_script_converts_v1_files_to_identical_heads(tiny_backbone, saved, tmp_path, capsys):
    meta, state = read_head_file(saved)
    old = _rewrite(saved, tmp_path / "old.safetensors", _as_v1(meta))
    assert _upgrade_script().main([str(old), "--out", str(tmp_path / "new")]) == 0
    new_meta, new_state = read_head_file(tmp_path / "new" / "old.safetensors")
    assert new_meta == meta and new_state.keys() == state.keys()
    assert all(torch.equal(state[k], new_state[k]) for k in state)


@pytest.mark.parametrize("change, match", [
    ({"prior_shot_pooling": "max"}, "shot_pooling='max'"),
    ({"prior_cell_norm": False}, "cell_norm=False"),
    ({"agnostic_kinds": None}, "before agnostic_kinds existed"),
])
def test_the_upgrade_script_refuses_heads_it_cannot_express(saved, tmp_path, capsys, change, match):
    v1 = _as_v1(read_head_file(saved)[0])
    head = {k: v for k, v in {**v1["head"], **change}.items() if v is not None}
    old = _rewrite(saved, tmp_path / "old.safetensors", {**v1, "head": head})
    assert _upgrade_script().main([str(old)]) == 1
    assert match in capsys.readouterr().err
    with safe_open(str(old), "pt") as f:
        assert json.loads(f.metadata()["vlfss"])["format"] == "vlfss-head/1"  # the file is left as it was


def test_broken_files_are_refused_by_name(tiny_backbone, saved, tmp_path):
    meta, state = read_head_file(saved)
    cases = {
        "missing.safetensors": (None, "do not exist"),
        "nohead.safetensors": ({"format": "something-else"}, "not a vlfss head checkpoint"),
        "incomplete.safetensors": ({k: v for k, v in meta.items() if k != "embed_dim"}, "lacks embed_dim"),
        "badcfg.safetensors": ({**meta, "head": {**meta["head"], "dim": "wide"}}, "head.dim"),
        "sizes.safetensors": ({**meta, "embed_dim": 7}, "sizes"),
    }
    for name, (m, match) in cases.items():
        path = tmp_path / name if m is None else _rewrite(saved, tmp_path / name, m)
        with pytest.raises(ModelError, match=match):
            load_head(path, tiny_backbone)
    broken = {k: v for k, v in state.items() if k != "text_scale"}
    with pytest.raises(ModelError, match="do not fit"):
        load_head(_rewrite(saved, tmp_path / "broken.safetensors", meta, broken), tiny_backbone)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_head(tmp_path / "junk.safetensors", tiny_backbone)


@pytest.mark.parametrize("path", sorted(ASSETS.glob("head-*.safetensors")), ids=lambda p: p.stem)
def test_shipped_heads_are_in_the_current_format(path):
    """The five shipped heads read as vlfss-head/2 with a complete prior (their outputs: test_head_regression)."""
    meta, _ = read_head_file(path)
    prior = TrainingFreeConfig(**meta["head"]["prior"])
    assert dataclasses.asdict(prior) == meta["head"]["prior"] and prior.proto_features == "tap0"
