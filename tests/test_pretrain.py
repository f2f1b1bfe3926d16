"""Tiny-CLIP pretraining plumbing: a few steps run, checkpoint (the engine's format), resume, export, init."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from vlfss.engine import checkpoint as ck
from vlfss.engine.config import PretrainConfig
from vlfss.engine.pretrain import _param_groups, export_weights, pretrain
from vlfss.errors import ConfigError


def _cfg(tmp_path, out: str = "run", **kw) -> PretrainConfig:
    base = dict(out_dir=str(tmp_path / out), steps=2, batch_size=2, eval_every=2, eval_images=2,
                checkpoint_every=1, warmup=1, workers=0, w_colour_ssl=1.0, threads=1)
    base.update(kw)
    return PretrainConfig(**base)


@pytest.mark.slow
def test_runs_checkpoints_resumes_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    final = pretrain(_cfg(tmp_path, steps=3))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and "zs_dense_miou" in log[-1] and "ssl" in log[-1]
    assert ck.load_checkpoint(out).step == 3  # safetensors + a weights_only state file
    straight = {k: v.clone() for k, v in load_file(str(final)).items()}
    assert all(v.dtype == torch.float16 for v in straight.values())
    # a run killed after step 2 resumes from that checkpoint and reaches the same weights
    (out / ck.POINTER).write_text(json.dumps({"step": 2, "weights": "ckpt-00000002.safetensors",
                                              "state": "ckpt-00000002.state.pt"}))
    resumed = load_file(str(pretrain(_cfg(tmp_path, steps=3))))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    pretrain(_cfg(tmp_path, steps=4))  # more steps continue the run
    assert ck.load_checkpoint(out).step == 4
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.002"):  # another recipe is not a continuation
        pretrain(_cfg(tmp_path, steps=5, lr=0.002))

    from vlfss.cli import main

    dest = tmp_path / "cli.safetensors"
    assert main(["pretrain-clip", "--export", str(dest), f"out_dir={out}"]) == 0
    exported, direct = load_file(str(dest)), load_file(str(export_weights(out, tmp_path / "x.safetensors")))
    assert exported.keys() == straight.keys() and all(torch.equal(exported[k], direct[k]) for k in direct)
    assert main(["pretrain-clip", "--export", str(dest), f"out_dir={tmp_path / 'empty'}"]) == 2
    assert "no tiny-CLIP pretraining checkpoint" in capsys.readouterr().err
def test_missing_init_weights_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="init_weights"):
        pretrain(_cfg(tmp_path, init_weights=str(tmp_path / "nope.safetensors")))


def test_logit_scalars_reset_and_get_their_own_learning_rate(tmp_path):
    """The sigmoid bias starts near the world's prior and moves fast (at SigLIP's -10 it stalled training)."""
    import open_clip

    from vlfss.modeling.backbones import register_open_clip_configs

    register_open_clip_configs()
    model = open_clip.create_model("vlfss-tiny-vit")
    groups = _param_groups(model, 0.05, scalar_lr_mult=10.0)
    scalars = [g for g in groups if g["lr_mult"] == 10.0]
    assert len(scalars) == 1 and len(scalars[0]["params"]) == 2 and scalars[0]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    pretrain(_cfg(tmp_path, steps=1, eval_every=100, lr=0.0, init_logit_bias=-2.5, init_logit_scale=10.0))
    state = ck.load_checkpoint(tmp_path / "run")
    assert float(state.tensors["logit_bias"]) == pytest.approx(-2.5)
    assert float(state.tensors["logit_scale"]) == pytest.approx(math.log(10.0))
    # a resumed run keeps the trained scalars (the reset is for a run's first step only)
    ck.save_checkpoint(tmp_path / "run", state.step, {**state.tensors, "logit_bias": torch.tensor(-1.0)},
                       {k: v for k, v in state.meta.items() if k not in ("format", "step")}, state.state)
    pretrain(_cfg(tmp_path, steps=2, eval_every=100, lr=0.0, init_logit_bias=-2.5))
    assert float(ck.load_checkpoint(tmp_path / "run").tensors["logit_bias"]) == -1.0
