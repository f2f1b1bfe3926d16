"""Multi-process evaluation: `vlfss eval` under torchrun (gloo, 2 processes) equals one process exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_CFG

from vlfss.cli.eval import parse_job
from vlfss.data.synthetic_store import materialize_synthetic
from vlfss.evaluation.report import read_jsonl
from vlfss.evaluation.runner import run_evaluation
from vlfss.modeling.head_file import new_head, save_head
from vlfss.segmenter import Segmenter, SegmenterConfig

REPO = Path(__file__).resolve().parent.parent
RUNNER = """
import sys
import open_clip
open_clip.add_model_config({cfg!r})
from vlfss.cli import main
sys.exit(main(["eval"] + sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_equal_one(tiny_clip_name, tiny_clip_weights, tiny_backbone, tmp_path):
    root = tmp_path / "synth"
    materialize_synthetic(root, "test", 120, 0, "hf", 40)
    torch.manual_seed(0)
    head = tmp_path / "head.safetensors"
    variant = Segmenter(tiny_backbone, SegmenterConfig(templates="plain")).variant
    save_head(new_head(tiny_backbone), head, tiny_backbone.model_id, variant)
    args = ["--benchmark", "synthetic", "--data-root", str(root), "--bench-opt", "n_images=120", "image_size=40",
            "--fold", "0", "3", "--shots", "0", "1", "--episodes", "5", "--seeds", "1", "--mode", "both",
            "--model", tiny_clip_name, "--pretrained", tiny_clip_weights, "--head", str(head),
            "--templates", "plain", "--quiet", "--no-plots"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers (OMP_NUM_THREADS=1)
    try:
        one = run_evaluation(parse_job(args + ["--out", str(tmp_path / "one")]))
    finally:
        torch.set_num_threads(threads)

    cfg = tmp_path / f"{tiny_clip_name}.json"
    cfg.write_text(json.dumps(TINY_CFG))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(cfg=str(cfg)))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(runner), *args,
                           "--out", str(tmp_path / "two")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, torn = read_jsonl(tmp_path / "two" / "results.jsonl")
    assert not torn and len(two) == len(one.rows) == 2 * (2 * 3 + 2)

    def numbers(r):
        return {k: v for k, v in r.items() if k not in ("command", "episodes_file")}

    assert [numbers(r) for r in two] == [numbers(r) for r in one.rows]
    assert all(r["episodes"] == 5 for r in two)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    cache = summary["feature_cache"]  # summed over both ranks; each rank encodes its own shard's images
    assert cache["image_encodes"] >= one.cache["image_encodes"] and cache["hit_rate"] > 0
