"""Templates, class lists, ensembles and learned prompts (round trip, model-id check, only ctx trains)."""

from __future__ import annotations

import warnings

import pytest
import torch

from vlfss.errors import InputError
from vlfss.modeling.prompts import PromptLearner, ensemble_text_embeddings, load_classnames, load_templates


def test_template_and_class_lists():
    assert len(load_templates("imagenet80")) == 80
    assert all("{}" in t for t in load_templates("default"))
    assert len(load_classnames("pascal_voc")) == 20 and len(load_classnames("coco")) == 80
    assert load_classnames("synthetic")[0] == "stripes"
    with pytest.raises(InputError, match="imagenet80"):
        load_templates("nope")


def test_bad_template_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("a photo of a cat\n")
    with pytest.raises(InputError, match="exactly one"):
        load_templates(str(p))


def test_ensemble_is_normalised_mean(tiny_backbone):
    t = ["a photo of a {}.", "{}"]
    e = ensemble_text_embeddings(tiny_backbone, ["cat", "dog"], t)
    parts = tiny_backbone.encode_text(["a photo of a cat.", "cat"])
    expect = torch.nn.functional.normalize(parts.mean(0), dim=0)
    assert torch.allclose(e[0], expect, atol=1e-5)


def test_prompt_learner_trains_only_ctx_and_round_trips(tiny_backbone, tmp_path):
    torch.manual_seed(0)
    pl = PromptLearner(tiny_backbone, ["cat", "dog"], n_ctx=3)
    emb = pl()
    assert emb.shape == (2, tiny_backbone.embed_dim)
    emb.sum().backward()
    assert pl.ctx.grad is not None and pl.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())
    with torch.no_grad():
        pl.ctx.add_(0.5)
    path = pl.save(tmp_path / "cat.safetensors")
    back = PromptLearner.load(path, tiny_backbone)
    assert torch.allclose(back.ctx, pl.ctx) and back.class_names == ["cat", "dog"]
    assert torch.allclose(back(), pl(), atol=1e-6)


def test_prompt_learner_context_changes_embedding(tiny_backbone):
    pl = PromptLearner(tiny_backbone, ["cat"], n_ctx=2, per_class=True)
    a = pl().detach().clone()
    with torch.no_grad():
        pl.ctx.add_(1.0)
    assert not torch.allclose(a, pl())


def test_prompt_file_from_other_model_refused(tiny_backbone, tmp_path):
    pl = PromptLearner(tiny_backbone, ["cat"], n_ctx=2)
    pl.model_id = "open_clip:ViT-B-16@openai"
    path = pl.save(tmp_path / "p.safetensors")
    with pytest.raises(InputError, match="learned for model 'open_clip:ViT-B-16@openai'"):
        PromptLearner.load(path, tiny_backbone)


def test_not_a_prompt_file(tiny_backbone, tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a vlfss prompt file"):
        PromptLearner.load(p, tiny_backbone)


def test_long_prompt_warns_and_truncates(tiny_backbone):
    long = "a photo of " + " ".join(["very"] * 40) + " big cat"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        e = tiny_backbone.encode_text([long])
    assert any("truncated" in str(x.message) for x in w)
    assert e.shape == (1, tiny_backbone.embed_dim)


def test_learned_prompt_runs_the_text_tower_once_per_context_state(tiny_backbone, rng):
    """Segmenting many images with a learned prompt encodes it once; an optimiser step on ctx re-encodes."""
    from tests.conftest import blob_scene
    from vlfss.segmenter import Segmenter, SegmenterConfig

    pl = PromptLearner(tiny_backbone, ["blob"], n_ctx=2)
    calls = []
    encode = pl._encode
    pl._encode = lambda x, ids: calls.append(1) or encode(x, ids)
    seg = Segmenter(tiny_backbone, SegmenterConfig(templates="plain", mode="training-free"))
    seg.prompt_learners["blob"] = pl
    for _ in range(3):
        seg.segment(blob_scene(rng, 40, 40)[0], texts=["blob"])
    assert len(calls) == 1
    first = pl.embeddings().clone()
    opt = torch.optim.SGD([pl.ctx], lr=1.0)
    pl().sum().backward()
    opt.step()
    assert not torch.allclose(pl.embeddings(), first) and len(calls) == 3  # the step's forward + one re-encode
