"""Tiny-CLIP pretraining plumbing: a few steps run, checkpoint, resume, export, init from shipped weights."""

from __future__ import annotations

import json

import pytest
import torch

from vlfss.engine.pretrain import PretrainConfig, export_weights, pretrain
from vlfss.errors import ConfigError


def _cfg(tmp_path, **kw) -> PretrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), steps=2, batch_size=2, eval_every=2, eval_images=2,
                checkpoint_every=1, warmup=1, workers=0, w_colour_ssl=1.0)
    base.update(kw)
    return PretrainConfig(**base)


@pytest.mark.slow
def test_runs_checkpoints_resumes_and_exports(tmp_path):
    final = pretrain(_cfg(tmp_path))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and "zs_dense_miou" in log[-1] and "ssl" in log[-1]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 2
    pretrain(_cfg(tmp_path, steps=3))  # resumes at step 2
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3
    from safetensors.torch import load_file

    weights = load_file(str(final))
    assert all(v.dtype == torch.float16 for v in weights.values())
    again = export_weights(tmp_path / "run" / "last.pt", tmp_path / "x.safetensors", _cfg(tmp_path))
    assert set(load_file(str(again))) == set(weights)


def test_missing_init_weights_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="init_weights"):
        pretrain(_cfg(tmp_path, init_weights=str(tmp_path / "nope.safetensors")))


def test_logit_scalars_reset_and_get_their_own_learning_rate(tmp_path):
    """The sigmoid bias starts near the world's prior and moves fast (at SigLIP's -10 it stalled training)."""
    import math

    import open_clip

    from vlfss.engine.pretrain import _param_groups
    from vlfss.modeling.backbones import register_open_clip_configs

    register_open_clip_configs()
    model = open_clip.create_model("vlfss-tiny-vit")
    groups = _param_groups(model, 0.05, scalar_lr_mult=10.0)
    scalars = [g for g in groups if g["lr_mult"] == 10.0]
    assert len(scalars) == 1 and len(scalars[0]["params"]) == 2 and scalars[0]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    pretrain(_cfg(tmp_path, steps=1, eval_every=100, lr=0.0, init_logit_bias=-2.5, init_logit_scale=10.0))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert float(state["logit_bias"]) == pytest.approx(-2.5)
    assert float(state["logit_scale"]) == pytest.approx(math.log(10.0))
    # a resumed run keeps the trained scalars (the reset is for a run's first step only)
    torch.save({**torch.load(tmp_path / "run" / "last.pt", weights_only=True),
                "model": {**state, "logit_bias": torch.tensor(-1.0)}}, tmp_path / "run" / "last.pt")
    pretrain(_cfg(tmp_path, steps=2, eval_every=100, lr=0.0, init_logit_bias=-2.5))
    assert float(torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]["logit_bias"]) == -1.0
