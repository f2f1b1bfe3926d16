"""Backbones: our dense forward reproduces the libraries' own outputs; frozen; cached text; clear errors.

Which weights a name loads, and how loading fails, is tested in test_loading.py.
"""

from __future__ import annotations

import pytest
import torch

from vlfss.errors import InputError, ModelError
from vlfss.modeling.backbones import RANDOM, TimmBackbone, TransformersCLIPBackbone, list_models
from vlfss.modeling.dense import VARIANTS, default_taps


def test_dense_pooled_matches_open_clip_encode_image(tiny_backbone):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    ours = tiny_backbone.dense(x, "plain").pooled
    with torch.no_grad():
        ref = tiny_backbone.model.encode_image(x)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_dense_shapes_every_variant(tiny_backbone, variant, size):
    x = torch.randn(2, 3, *size)
    f = tiny_backbone.dense(x, variant)
    h, w = size[0] // 8, size[1] // 8
    assert f.z.shape == (2, tiny_backbone.embed_dim, h, w)
    assert [t.shape for t in f.taps] == [(2, 48, h, w)] * len(tiny_backbone.taps)
    assert torch.isfinite(f.z).all()


def test_variants_differ_from_plain(tiny_backbone):
    x = torch.randn(1, 3, 32, 32)
    plain = tiny_backbone.dense(x, "plain").z
    for v in ("maskclip", "clearclip", "naclip", "sclip"):
        assert not torch.allclose(tiny_backbone.dense(x, v).z, plain)


def test_plain_last_tap_is_final_block_output(tiny_backbone):
    x = torch.randn(1, 3, 32, 32)
    f = tiny_backbone.dense(x, "plain")
    assert tiny_backbone.taps[-1] == tiny_backbone.num_layers - 1
    # z is ln_post + proj of the final tokens, i.e. of the last tap
    tokens = f.taps[-1].flatten(2).transpose(1, 2)
    v = tiny_backbone.model.visual
    z = (v.ln_post(tokens) @ v.proj).transpose(1, 2).reshape_as(f.z)
    assert torch.allclose(z, f.z, atol=1e-5)


def test_pos_embed_interpolated_and_cached(tiny_backbone):
    tiny_backbone.dense(torch.randn(1, 3, 48, 64))
    assert (6, 8) in tiny_backbone._pos_cache
    a = tiny_backbone.pos_embed_for((6, 8))
    assert a is tiny_backbone.pos_embed_for((6, 8))
    assert a.shape == (1 + 48, 48)


def test_frozen_no_grad_and_stays_eval(tiny_backbone):
    tiny_backbone.train()
    assert not tiny_backbone.training and not tiny_backbone.model.training
    assert all(not p.requires_grad for p in tiny_backbone.parameters())
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    f = tiny_backbone.dense(x)
    assert not f.z.requires_grad


def test_text_cache_encodes_each_string_once(tiny_backbone):
    before = tiny_backbone.text_encodes
    a = tiny_backbone.encode_text(["a cache cat", "a cache dog", "a cache cat"])  # strings no other test uses
    b = tiny_backbone.encode_text(["a cache dog"])
    assert tiny_backbone.text_encodes - before == 2
    assert torch.allclose(a[1], b[0]) and torch.allclose(a[0], a[2])
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_non_multiple_of_patch_rejected(tiny_backbone):
    with pytest.raises(InputError, match="multiple of the patch size"):
        tiny_backbone.dense(torch.randn(1, 3, 30, 32))


def test_unknown_variant_rejected(tiny_backbone):
    with pytest.raises(InputError, match="clearclip"):
        tiny_backbone.dense(torch.randn(1, 3, 32, 32), "bogus")


def test_list_models_has_default_and_open_clip():
    names = list_models()
    assert "vlfss-tiny" in names and "ViT-B-16" in names


def test_default_taps():
    assert default_taps(12) == (3, 7, 11)
    assert default_taps(3) == (0, 1, 2)


def _tiny_hf_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 3,
                       "image_size": 32, "patch_size": 8},
        projection_dim=24,
    )
    return CLIPModel(cfg).eval()


def test_transformers_adapter_matches_get_image_features():
    model = _tiny_hf_clip()
    bb = TransformersCLIPBackbone(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=x)
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    assert torch.allclose(bb.dense(x).pooled, ref, atol=1e-5)
    for v in VARIANTS:
        assert bb.dense(torch.randn(1, 3, 24, 40), v).z.shape == (1, 24, 3, 5)
    with pytest.raises(ModelError, match="tokenizer"):
        bb.encode_text(["a cat"])


def test_timm_adapter_is_visual_only():
    bb = TimmBackbone("resnet18", RANDOM)
    f = bb.dense(torch.randn(1, 3, 64, 64))
    side = 64 // bb.patch_size  # resnet18: stride 32
    assert f.z.shape == (1, bb.embed_dim, side, side) and all(t.shape[-2:] == (side, side) for t in f.taps)
    with pytest.raises(ModelError, match="no text encoder"):
        bb.encode_text(["a cat"])
    with pytest.raises(InputError):
        bb.dense(torch.randn(1, 3, 64, 64), "clearclip")


def test_open_clip_blocks_under_cpu_bf16_autocast_skip_the_expanded_weight_copy(tiny_backbone):
    """Under CPU autocast an open_clip block runs as its parts on batch-first tokens (nn.MultiheadAttention would
    project its transposed input through a materialised per-token copy of the weight: ViT-B-16 bf16 ran ~30x
    slower than fp32); the same maths as the block under autocast, and in fp32 the block itself (same bits)."""
    torch.manual_seed(0)
    block = tiny_backbone.parts.blocks[0]
    module = tiny_backbone.model.visual.transformer.resblocks[0]
    x = torch.randn(2, 17, module.ln_1.normalized_shape[0])
    with torch.no_grad():
        assert torch.equal(block.forward(x), module(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, ref = block.forward(x), module(x)
    assert fast.dtype == ref.dtype
    assert torch.allclose(fast.float(), ref.float(), atol=0.05, rtol=0.05)
    assert torch.allclose(fast.float(), module(x), atol=0.05, rtol=0.05)
