"""Prompt fine-tuning: cached features, the loss goes down, the prompt file round-trips and drives `vlfss segment`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import blob_scene
from vlfss.engine.config import PromptTuneConfig
from vlfss.engine.prompt_tuning import learn_prompt, tune_prompts
from vlfss.errors import InputError
from vlfss.modeling.prompts import PromptLearner, read_prompt_file
from vlfss.segmenter import Segmenter, SegmenterConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def seg(tiny_backbone):
    return Segmenter(tiny_backbone, SegmenterConfig(templates="plain"))


def _pairs(rng, n=4):
    return [blob_scene(rng, 40, 40) for _ in range(n)]


def test_learn_prompt_encodes_each_image_once_and_fits_the_masks(seg, rng):
    pairs = _pairs(rng)
    n0 = seg.image_encodes
    res = learn_prompt(seg, "blob", [p[0] for p in pairs], [p[1] for p in pairs],
                       PromptTuneConfig(steps=40, lr=0.01, n_ctx=2, anchor_weight=0.0))
    assert seg.image_encodes - n0 == len(pairs)  # the encoder ran once per image; steps ran only the text tower
    assert len(res.losses) == 40 and np.mean(res.losses[-5:]) < np.mean(res.losses[:5])
    assert res.train_iou_tuned > res.train_iou_templates
    assert all(not p.requires_grad for p in seg.backbone.parameters())


def test_anchor_keeps_the_prompt_near_the_templates(seg, rng):
    """The KgCoOp-style term trades fit on a handful of images for staying near what the name already means."""
    pairs = _pairs(rng)
    template = seg.text_embeddings(["blob"])[0]
    cos = {}
    for w in (0.0, 5.0):
        res = learn_prompt(seg, "blob", [p[0] for p in pairs], [p[1] for p in pairs],
                           PromptTuneConfig(steps=40, lr=0.01, n_ctx=2, anchor_weight=w))
        with torch.no_grad():
            cos[w] = float(torch.nn.functional.cosine_similarity(res.learner()[0], template, dim=0))
    assert cos[5.0] > cos[0.0], cos  # same seed and data: only the anchor weight differs


def test_residual_prompt_starts_at_the_templates_and_round_trips(seg, rng, tmp_path):
    """The default residual prompt is exactly the template ensemble before training (so tuning starts from the
    templates' accuracy, not from one template's), learns a correction, and its file reproduces it."""
    pairs = _pairs(rng, 3)
    template = seg.text_embeddings(["blob"])[0]
    res0 = learn_prompt(seg, "blob", [p[0] for p in pairs], [p[1] for p in pairs], PromptTuneConfig(steps=1, lr=1e-12))
    with torch.no_grad():
        assert torch.allclose(res0.learner()[0], template, atol=1e-5)
    assert res0.train_iou_tuned == pytest.approx(res0.train_iou_templates, abs=1e-6)
    res = learn_prompt(seg, "blob", [p[0] for p in pairs], [p[1] for p in pairs],
                       PromptTuneConfig(steps=40, lr=0.01, n_ctx=2, anchor_weight=0.0))
    assert res.train_iou_tuned > res.train_iou_templates
    path = res.learner.save(tmp_path / "r.safetensors")
    back = PromptLearner.load(path, seg.backbone)
    with torch.no_grad():
        assert torch.allclose(back()[0], res.learner()[0], atol=1e-6)
        assert not torch.allclose(back()[0], template, atol=1e-3)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    del tensors["anchor"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(InputError, match="lacks its anchor"):
        PromptLearner.load(tmp_path / "broken.safetensors", seg.backbone)
    plain = learn_prompt(seg, "blob", [p[0] for p in pairs], [p[1] for p in pairs],
                         PromptTuneConfig(steps=1, lr=1e-12, residual=False))
    with torch.no_grad():
        assert not torch.allclose(plain.learner()[0], template, atol=1e-3)  # plain CoOp: "a photo of a <name>."


def test_prompt_file_round_trip_and_model_check(seg, rng, tmp_path, tiny_clip_name):
    import open_clip

    from vlfss.modeling.backbones import build_backbone

    pairs = _pairs(rng, 2)
    path = tune_prompts(seg, "blob", [p[0] for p in pairs], [p[1] for p in pairs], tmp_path / "blob.safetensors",
                        PromptTuneConfig(steps=3, n_ctx=3))
    meta, ctx = read_prompt_file(path)
    assert meta["class_names"] == ["blob"] and meta["n_ctx"] == 3 and meta["steps"] == 3 and meta["images"] == 2
    pl = PromptLearner.load(path, seg.backbone)
    assert torch.equal(pl.ctx.detach(), ctx)
    assert seg.use_prompt_file(path) == ["blob"]
    with torch.no_grad():
        assert torch.allclose(seg.text_embeddings(["blob"])[0], pl()[0])
    assert not list(tmp_path.glob("*.tmp"))
    from safetensors.torch import save_file

    torch.manual_seed(5)
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model(tiny_clip_name).state_dict().items()}, str(other))
    with pytest.raises(InputError, match="re-run tune-prompts"):
        PromptLearner.load(path, build_backbone(tiny_clip_name, str(other)))


def test_bad_inputs(seg, rng):
    img, mask = blob_scene(rng)
    with pytest.raises(InputError, match="one mask per image"):
        learn_prompt(seg, "blob", [img, img], [mask])
    with pytest.raises(InputError, match="no mask marks any foreground"):
        learn_prompt(seg, "blob", [img], [np.zeros_like(mask)])
    with pytest.raises(InputError, match="class name"):
        learn_prompt(seg, "  ", [img], [mask])


def _write_pairs(rng, folder: Path, n: int) -> tuple[list[str], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    imgs, masks = [], []
    for i in range(n):
        img, mask = blob_scene(rng, 40, 48)
        Image.fromarray(img).save(folder / f"img{i}.png")
        Image.fromarray(mask * 255).save(folder / f"img{i}_mask.png")
        imgs.append(str(folder / f"img{i}.png"))
        masks.append(str(folder / f"img{i}_mask.png"))
    return imgs, masks


def test_cli_tune_prompts_then_segment_with_the_prompt(tiny_clip_name, tiny_clip_weights, tmp_path, rng, capsys):
    from vlfss.cli import main

    imgs, masks = _write_pairs(rng, tmp_path / "data", 3)
    out = tmp_path / "blob.safetensors"
    model = ["--model", tiny_clip_name, "--pretrained", tiny_clip_weights, "--templates", "plain"]
    rc = main(["tune-prompts", "--class", "blob", "--images", *imgs, "--masks", *masks, "--out", str(out),
               "--steps", "5", "--n-ctx", "2", *model])
    assert rc == 0, capsys.readouterr().err
    assert "learned a 2-vector prompt for 'blob'" in capsys.readouterr().out and out.is_file()
    assert main(["tune-prompts", "--class", "blob", "--images", *imgs, "--masks", *masks, "--out", str(out),
                 *model]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["tune-prompts", "--class", "blob", "--images", *imgs, "--masks", *masks[:2], "--out",
                 str(tmp_path / "x.safetensors"), *model]) == 2
    assert "one mask per image" in capsys.readouterr().err
    rc = main(["segment", imgs[0], "--prompt", str(out), "--mode", "training-free", "--out", str(tmp_path / "seg"),
               "--quiet", *model])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "seg" / "img0.json").read_text())
    assert [c["name"] for c in summary["classes"]] == ["blob"]
    other = tmp_path / "other.safetensors"
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(7)
    save_file({k: v.contiguous() for k, v in open_clip.create_model(tiny_clip_name).state_dict().items()}, str(other))
    rc = main(["segment", imgs[0], "--prompt", str(out), "--mode", "training-free", "--out", str(tmp_path / "s2"),
               "--model", tiny_clip_name, "--pretrained", str(other), "--templates", "plain"])
    assert rc == 2 and "re-run tune-prompts" in capsys.readouterr().err


def test_cli_defaults_are_the_dataclasses():
    """`vlfss tune-prompts` with no tuning or model flags learns with PromptTuneConfig() on SegmenterConfig's model
    (training-free), and each flag reaches its field."""
    from vlfss.cli import build_parser
    from vlfss.cli.common import segmenter_config
    from vlfss.cli.tune_prompts import prompt_config

    need = ["tune-prompts", "--class", "c", "--images", "a.png", "--masks", "m.png", "--out", "o.safetensors"]
    args = build_parser().parse_args(need)
    assert prompt_config(args) == PromptTuneConfig()
    assert segmenter_config(args) == SegmenterConfig(mode="training-free")
    args = build_parser().parse_args([*need, "--n-ctx", "2", "--steps", "7", "--lr", "0.5", "--init", "",
                                      "--anchor-weight", "0", "--no-residual", "--seed", "3", "--templates", "plain"])
    assert prompt_config(args) == PromptTuneConfig(n_ctx=2, steps=7, lr=0.5, init=None, anchor_weight=0.0,
                                                   residual=False, seed=3)
    assert segmenter_config(args).templates == "plain"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("/", "_"), REPO / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eval_prompt_tuning_script_prints_a_table(tiny_clip_name, tiny_clip_weights, tmp_path, capsys):
    script = _load_script("eval/prompt_tuning.py")
    out = tmp_path / "res.json"
    rc = script.main(["--model", tiny_clip_name, "--pretrained", tiny_clip_weights, "--templates", "plain",
                      "--data-root", str(tmp_path / "data"), "--image-size", "48", "--train-images", "40",
                      "--test-images", "30", "--classes", "stripes", "dots", "--shots", "2", "--heldout", "3",
                      "--steps", "3", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "templates" in text and "tuned" in text and "stripes" in text and "mean" in text
    rows = json.loads(out.read_text())["classes"]
    assert [r["class"] for r in rows] == ["stripes", "dots"]
    assert all(0 <= r["iou_templates"] <= 1 and 0 <= r["iou_tuned"] <= 1 for r in rows)
