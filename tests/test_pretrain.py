"""Tiny-CLIP pretraining plumbing: a few steps run, checkpoint, resume, export, init from shipped weights."""

from __future__ import annotations

import json

import pytest
import torch

from vlfss.errors import ConfigError
from vlfss.pretrain import PretrainConfig, export_weights, pretrain


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
