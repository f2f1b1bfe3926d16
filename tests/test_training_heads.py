"""eval/train_heads.py: per-fold and all-class heads end up as loadable files where the segmenter finds them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.test_training import SIZE, synth_root  # noqa: F401 - synth_root is a fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_heads_script_on_the_test_model(tiny_clip_name, tiny_clip_weights, tiny_backbone, synth_root,  # noqa: F811
                                              tmp_path, capsys):
    from vlfss.modeling.head_file import load_head

    spec = importlib.util.spec_from_file_location("train_heads", REPO / "eval" / "train_heads.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sets = [f"segmenter.model={tiny_clip_name}", f"segmenter.pretrained={tiny_clip_weights}",
            "segmenter.templates=plain", "segmenter.head.dim=32", "segmenter.head.hidden=32",
            f"data.data_root={synth_root}", f"data.options={{image_size: {SIZE}}}",
            "data.train_options={n_images: 100}", "data.val_options={n_images: 60}", "episodes.max_shots=2",
            "steps=2", "batch_episodes=2", "val.episodes=2", "val.modes=[shots]", "val.more_shots=[2]",
            "augment.views=0", "progress=false", "warmup=1"]
    assets = tmp_path / "assets"
    rc = mod.main(["--only", "1", "all", "--assets", str(assets), "--runs", str(tmp_path / "runs"), "--set", *sets])
    assert rc == 0
    fold1 = assets / f"head-{tiny_clip_name}-fold1.safetensors"
    demo = assets / f"head-{tiny_clip_name}.safetensors"
    head, _ = load_head(fold1, tiny_backbone)
    load_head(demo, tiny_backbone)
    from vlfss.modeling.head_file import read_head_file

    meta, _ = read_head_file(fold1)
    assert meta["fold"] == 1 and not set(meta["train_classes"]) & set(range(5, 10))
    meta_all, _ = read_head_file(demo)
    assert meta_all["train_classes"] == list(range(20))
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    assert rows == ["fold1", "all"], out  # one row per head, named by the head
