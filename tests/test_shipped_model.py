"""The embedded default: weights ship in the package, load through open_clip, reproduce a recorded embedding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlfss.modeling.backbones import TINY_MODEL, TINY_WEIGHTS

REF = Path(__file__).parent / "data" / "tiny_clip_reference.json"
pytestmark = pytest.mark.skipif(not TINY_WEIGHTS.is_file(), reason="tiny CLIP weights not shipped in this checkout")


def test_weights_small_and_safetensors():
    assert TINY_WEIGHTS.suffix == ".safetensors"
    assert TINY_WEIGHTS.stat().st_size < 25 * 2**20


def test_loads_through_open_clip_and_reproduces_reference():
    import open_clip

    from vlfss.data.synthetic import generate_scene
    from vlfss.engine.pretrain import _normalise
    from vlfss.modeling.backbones import register_open_clip_configs

    ref = json.loads(REF.read_text())
    register_open_clip_configs()
    model = open_clip.create_model(TINY_MODEL, pretrained=str(TINY_WEIGHTS)).eval()
    tok = open_clip.get_tokenizer(TINY_MODEL)
    scene = generate_scene(*ref["image_scene"])
    with torch.no_grad():
        img = model.encode_image(_normalise(scene.image[None]), normalize=True)[0]
        txt = model.encode_text(tok(ref["texts"]), normalize=True)
    assert torch.allclose(img, torch.tensor(ref["image_embedding"]), atol=1e-4)
    assert torch.allclose(txt, torch.tensor(ref["text_embeddings"]), atol=1e-4)


def test_default_backbone_is_the_tiny_clip():
    from vlfss.modeling.backbones import build_backbone

    bb = build_backbone()
    assert bb.model_id.startswith("vlfss-tiny@") and bb.patch_size == 6 and bb.image_size == 96
    assert bb.dense(torch.zeros(1, 3, 96, 96)).z.shape[-2:] == (16, 16)
