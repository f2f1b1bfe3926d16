"""Corruption-robust distillation of the tiny CLIP (``vlfss robust-clip``): batches, loss, run, resume, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlfss.engine import checkpoint as ck
from vlfss.engine.config import RobustConfig
from vlfss.engine.robust import corrupt, distill_loss, export_weights, make_batch, robustify
from vlfss.errors import ConfigError
from vlfss.modeling.backbones.tiny import TINY_WEIGHTS


def _pool(n: int = 6, size: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_corrupt_applies_only_what_has_a_chance():
    img = _pool(1)[0]
    off = RobustConfig(blur=0, resample=0, noise=0, jpeg=0)
    assert np.array_equal(corrupt(img, np.random.default_rng(0), off), img)
    scaled = corrupt(img, np.random.default_rng(0), RobustConfig(blur=0, noise=0, jpeg=0, resample=1.0,
                                                                 resample_min=2.0, resample_max=2.0))
    assert scaled.shape == (48, 48, 3)  # make_batch resizes it back, as the segmenter does
    blurred = [corrupt(img, np.random.default_rng(s), RobustConfig(resample=0, noise=0, jpeg=0, blur=1.0))
               for s in range(4)]
    assert all(b.shape == img.shape for b in blurred) and min(b.std() for b in blurred) < 0.9 * img.std()


def test_batches_are_deterministic_and_clean_views_equal_the_targets():
    pool = _pool()
    cfg = RobustConfig(batch_size=4, clean_fraction=0.0, resample=1.0, resample_min=0.5, resample_max=0.5)
    a, b = make_batch(pool, 3, cfg), make_batch(pool, 3, cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same (seed, step): same batch
    assert a[1].shape == a[0].shape == (4, 3, 24, 24)  # corrupted views come back at the scene's size
    assert not torch.equal(a[0], make_batch(pool, 4, cfg)[0])
    assert not torch.allclose(a[0], a[1])
    clean, views = make_batch(pool, 3, RobustConfig(batch_size=4, clean_fraction=1.0))
    assert torch.equal(clean, views)


def test_distill_loss_is_zero_only_at_the_teacher_and_weights_the_last_level():
    t = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    total, parts = distill_loss([x.clone() for x in t], t, w_tokens=1.0)
    assert total.item() == 0 and parts == [0, 0, 0]
    s = [x + 0.1 * torch.randn_like(x) for x in t]
    one, parts = distill_loss(s, t, w_tokens=1.0)
    two, _ = distill_loss(s, t, w_tokens=2.0)
    assert one.item() > 0 and two.item() == pytest.approx(one.item() + parts[-1], rel=1e-5)


def test_bad_settings_fail_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="clean_fraction"):
        robustify(RobustConfig(out_dir=str(tmp_path / "a"), clean_fraction=1.5))
    with pytest.raises(ConfigError, match="teacher_weights .* does not exist"):
        robustify(RobustConfig(out_dir=str(tmp_path / "b"), teacher_weights=str(tmp_path / "none.safetensors")))
    with pytest.raises(ConfigError, match="bf16 must be"):
        robustify(RobustConfig(out_dir=str(tmp_path / "c"), steps=1, pool_images=4, batch_size=2, bf16="fast",
                               eval_images=2))


def _cfg(tmp_path, **kw) -> RobustConfig:
    base = dict(out_dir=str(tmp_path / "run"), steps=3, batch_size=3, pool_images=6, eval_every=3, eval_images=3,
                checkpoint_every=1, warmup=1, threads=1, bf16="fp32")
    return RobustConfig(**{**base, **kw})


@pytest.mark.slow
def test_runs_resumes_and_exports_a_drop_in_weights_file(tmp_path):
    out = tmp_path / "run"
    final = robustify(_cfg(tmp_path))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 0 and set(log[0]) >= {"clean", "blur:1", "scale:0.75", "jpeg:30"}  # the teacher's
    assert log[-1]["step"] == 3 and "clean" in log[-1] and len(log[-1]["levels"]) == 6  # 5 blocks + tokens
    straight = load_file(str(final))
    teacher = load_file(str(TINY_WEIGHTS))
    assert straight.keys() == teacher.keys() and all(v.dtype == torch.float16 for v in straight.values())
    text = [k for k in teacher if not k.startswith("visual.")]
    assert all(torch.equal(straight[k], teacher[k].half()) for k in text)  # the text tower is the teacher's
    assert any(not torch.equal(straight[k], teacher[k].half()) for k in teacher if k.startswith("visual."))
    # a run killed after step 2 resumes from that checkpoint and reaches the same weights
    (out / ck.POINTER).write_text(json.dumps({"step": 2, "weights": "ckpt-00000002.safetensors",
                                              "state": "ckpt-00000002.state.pt"}))
    resumed = load_file(str(robustify(_cfg(tmp_path))))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    with pytest.raises(ConfigError, match=r"lr: "):  # another recipe is not a continuation
        robustify(_cfg(tmp_path, steps=4, lr=1e-3))

    from vlfss.cli import main

    dest = tmp_path / "cli.safetensors"
    assert main(["robust-clip", "--export", str(dest), f"out_dir={out}"]) == 0
    direct = load_file(str(export_weights(_cfg(tmp_path), tmp_path / "x.safetensors")))
    assert all(torch.equal(load_file(str(dest))[k], direct[k]) for k in direct)
    assert main(["robust-clip", "--export", str(dest), f"out_dir={tmp_path / 'empty'}"]) == 2


def test_the_robust_model_shares_the_text_tower_and_has_its_own_image_tower_and_heads():
    """``vlfss-tiny-robust``: the embedded text tower, the distilled image tower, heads trained on it."""
    from vlfss.modeling.backbones import build_backbone
    from vlfss.modeling.head_file import default_head_path, load_head

    base, robust = build_backbone("vlfss-tiny"), build_backbone("vlfss-tiny-robust")
    assert robust.model_id.startswith("vlfss-tiny-robust@") and robust.model_id != base.model_id
    assert torch.equal(robust.encode_text(["stripes"]), base.encode_text(["stripes"]))
    x = torch.zeros(1, 3, 96, 96)
    assert not torch.allclose(robust.dense(x).z, base.dense(x).z)
    for name in ["vlfss-tiny-robust"] + [f"vlfss-tiny-robust-fold{i}" for i in range(4)]:
        load_head(default_head_path(name), robust)  # trained on this backbone: accepted
    with pytest.raises(Exception, match="was trained on"):
        load_head(default_head_path("vlfss-tiny"), robust)


def test_a_broken_image_tower_file_is_one_clear_error(tmp_path):
    from vlfss.errors import ModelError
    from vlfss.modeling.backbones.tiny import TinyCLIPBackbone

    bad = tmp_path / "visual.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="image tower weights .* do not load"):
        TinyCLIPBackbone(str(TINY_WEIGHTS), visual=str(bad))


def test_rebind_heads_moves_a_head_to_a_new_id_and_refuses_another_backbones(tiny_backbone, tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from vlfss.modeling.head_file import new_head, read_head_file, save_head

    spec = importlib.util.spec_from_file_location(
        "eval_rebind_heads", Path(__file__).resolve().parent.parent / "eval" / "rebind_heads.py")
    rb = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = rb
    spec.loader.exec_module(rb)
    path = save_head(new_head(tiny_backbone), tmp_path / "head.safetensors", "old-id", "plain")
    out = tmp_path / "out"
    out.mkdir()
    assert rb.main(["--from", "old-id", "--to", "new-id", "--out", str(out), str(path)]) == 0
    meta, state = read_head_file(out / "head.safetensors")
    _, before = read_head_file(path)
    assert meta["backbone"] == "new-id" and meta["rebound_from"] == "old-id"
    assert all(torch.equal(state[k], before[k]) for k in before)
    assert rb.main(["--from", "other-id", "--to", "new-id", str(path)]) == 2  # trained on another backbone
    assert read_head_file(path)[0]["backbone"] == "old-id"  # and left as it was


def test_restore_shows_the_student_what_the_gate_and_restorer_give_the_robust_tower():
    """``restore``: views the embedded gate flags are filtered by the embedded restorer, as at inference; the others
    (clean scenes among them) reach the student as they are."""
    from vlfss.data.perturb import Perturbation, apply_image
    from vlfss.data.synthetic import SyntheticConfig, generate_scene
    from vlfss.engine.robust import inference_view, to_input

    prepare = inference_view(RobustConfig(restore=True))
    scenes = [generate_scene(5, i, SyntheticConfig()).image for i in range(2)]
    x = torch.stack([to_input(scenes[0], (96, 96)),
                     to_input(apply_image(Perturbation("blur", 1.5), scenes[1]), (96, 96))])
    shown, flags, sigmas = prepare(x)
    assert flags.tolist() == [False, True] and sigmas[0] == 0 and sigmas[1] > 0.5
    assert torch.equal(shown[0], x[0]) and not torch.allclose(shown[1], x[1])
    assert inference_view(RobustConfig()) is None  # off by default: the views as they are


def test_restore_and_init_visual_refuse_what_they_cannot_use(tmp_path):
    with pytest.raises(ConfigError, match="restore needs the embedded teacher"):
        robustify(_cfg(tmp_path, restore=True, teacher_weights=str(TINY_WEIGHTS)))
    with pytest.raises(ConfigError, match="init_visual .* does not exist"):
        robustify(_cfg(tmp_path, init_visual=str(tmp_path / "none.safetensors")))


def test_init_visual_is_where_the_student_starts(tmp_path):
    """A run from the shipped robust tower with a zero learning rate exports that tower unchanged; the log counts
    the views the gate flagged and the restorer filtered."""
    from vlfss.modeling.backbones.tiny import ROBUST_VISUAL

    out = tmp_path / "run"
    final = load_file(str(robustify(_cfg(tmp_path, steps=1, eval_every=1, lr=0.0, init_visual=str(ROBUST_VISUAL),
                                         restore=True, clean_fraction=0.0))))
    shipped = load_file(str(ROBUST_VISUAL))
    assert all(torch.equal(final[f"visual.{k}"], v.half()) for k, v in shipped.items())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"flagged", "restored"} <= set(log[-1]) and 0 <= log[-1]["restored"] <= log[-1]["flagged"] <= 3
