"""Training under torchrun: two gloo processes shard the episodes and end with identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_CFG
from tests.test_training import overrides, synth_root  # noqa: F401 - synth_root is a fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def local_model(tiny_clip_weights, tmp_path) -> str:
    """The tiny random CLIP as an open_clip local-dir, so that torchrun's fresh processes can build it."""
    d = tmp_path / "tiny-clip"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    shutil.copy(tiny_clip_weights, d / "open_clip_model.safetensors")
    return f"local-dir:{d}"


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(local_model, synth_root, tmp_path):  # noqa: F811
    out = tmp_path / "ddp"
    extra = ["steps=3", "batch_episodes=4", "save_rank_weights=true", "val.episodes=3", "epoch_steps=3",
             "augment.views=1", "threads=1"]
    args = overrides(local_model, None, synth_root, out, *extra)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vlfss.cli", "train", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world"] == 2 and summary["replica_max_difference"] == 0.0
    assert set(summary["val"]) == {"text", "shots", "text+shots"}
    head = load_file(str(out / "head.safetensors"))
    assert all(torch.equal(head[k], r0["head." + k]) for k in head)

    # Sharding keeps the global batch: one process on the same config takes the same optimiser path, up to float
    # summation order. AdamW moves a weight by about lr per step (exactly lr * sign(grad) on the first), so where
    # that order flips a near-zero gradient the two runs can part by at most about steps * lr; elsewhere they agree
    # to float precision.
    from vlfss.config import load_config
    from vlfss.engine.config import TrainConfig
    from vlfss.engine.train import fit

    single = load_config(TrainConfig, None, overrides(local_model, None, synth_root, tmp_path / "one", *extra))
    one = load_file(str(fit(single)))
    bound = single.steps * single.lr
    assert all(torch.allclose(one[k], head[k], rtol=0, atol=bound) for k in head)
