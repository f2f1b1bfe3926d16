"""A Hugging Face ``transformers`` CLIPModel behind the FrozenBackbone interface (``transformers:<dir-or-repo>``).

A local folder (``save_pretrained`` output) loads offline. A hub repo id is taken from the local cache when it
is there; otherwise it is downloaded, and when the hub cannot be used loading fails at once with the fix.
transformers is imported inside functions: a heavy optional dependency, loaded when such a model is built.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from torch import Tensor, nn

from ...errors import ModelError
from ..dense import BlockParts, ViTParts
from ..prompts import warn_if_truncated
from .base import ViTBackbone
from .weights import hub_repo_cached, looks_like_path, offline_error, unreachable_reason

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_FIX = "Pass a local folder holding config.json and model.safetensors (save_pretrained output) as transformers:/path"


def _local_files_only(source: str, cache_dir: str | None) -> bool:
    """Whether ``source`` must load without the hub: a folder, or a cached repo while the hub is unusable.

    Raises the offline error when ``source`` is a repo that is not cached and the hub cannot be used, and a
    ModelError naming the path when ``source`` is meant as a folder that does not exist.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return True
    if path.exists() or source.startswith((".", "~", "/")) or (looks_like_path(source) and source.count("/") != 1):
        raise ModelError(f"transformers:{source}: {path} is not a folder; pass the folder save_pretrained wrote "
                         "(config.json, model.safetensors)")
    reason = unreachable_reason()
    if reason is None:
        return False
    if not hub_repo_cached(source, cache_dir):
        raise offline_error(f"the transformers CLIP {source!r}", reason, _FIX)
    return True


def _load(source: str, cache_dir: str | None):
    """(CLIPModel, tokenizer or None) of a folder or hub repo id."""
    from transformers import AutoTokenizer, CLIPModel

    local = _local_files_only(source, cache_dir)
    try:
        model = CLIPModel.from_pretrained(source, cache_dir=cache_dir, local_files_only=local)
    except Exception as e:  # transformers raises OSError/ValueError/... for bad folders and repos
        raise ModelError(f"could not load transformers CLIP {source!r} ({type(e).__name__}). {_FIX}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir, local_files_only=local)
    except Exception:  # no tokenizer files: the model still gives image features
        tokenizer = None
    return model, tokenizer


def _layer_takes_two(layer: nn.Module) -> bool:
    params = list(inspect.signature(layer.forward).parameters)
    return len(params) >= 2 and params[1] in ("attention_mask", "causal_attention_mask")


def _block(layer: nn.Module) -> BlockParts:
    att = layer.self_attn
    heads = att.num_heads

    def qkv(y: Tensor):
        b, length, c = y.shape
        return tuple(p(y).reshape(b, length, heads, c // heads).transpose(1, 2)
                     for p in (att.q_proj, att.k_proj, att.v_proj))

    two = _layer_takes_two(layer)

    def forward(x: Tensor) -> Tensor:
        out = layer(x, None) if two else layer(x)
        return out[0] if isinstance(out, tuple) else out

    return BlockParts(ln_1=layer.layer_norm1, qkv=qkv, out_proj=att.out_proj, ln_2=layer.layer_norm2,
                      mlp=layer.mlp, forward=forward)


class TransformersCLIPBackbone(ViTBackbone):
    """A Hugging Face ``transformers`` CLIPModel (a folder, a hub repo id, or an in-memory model)."""

    def __init__(self, source: str | nn.Module, cache_dir: str | None = None,
                 taps: tuple[int, ...] | None = None, device: str = "cpu", tokenizer=None) -> None:
        super().__init__(taps)
        if isinstance(source, nn.Module):
            model, name = source, "in-memory"
        else:
            name = source
            model, loaded_tokenizer = _load(source, cache_dir)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        self.model_id = f"transformers:{name}"
        self.model = model.to(device)
        self._tokenizer = tokenizer
        vm = model.vision_model
        emb = vm.embeddings
        vcfg = model.config.vision_config
        self.patch_size = int(vcfg.patch_size)
        self.image_size = int(vcfg.image_size)
        self.embed_dim = int(model.config.projection_dim)
        self.has_text = tokenizer is not None
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        g = self.image_size // self.patch_size
        self._init_parts(ViTParts(
            patch_size=self.patch_size, native_grid=(g, g), patchify=emb.patch_embedding,
            class_embedding=emb.class_embedding, pos_embedding=emb.position_embedding.weight,
            ln_pre=vm.pre_layrnorm, blocks=[_block(layer) for layer in vm.encoder.layers],
            ln_post=vm.post_layernorm, proj=model.visual_projection, pool_type="tok",
            final_ln_after_pool=True,
        ))
        self._freeze()

    def tokenize(self, texts: list[str]) -> Tensor:
        if self._tokenizer is None:
            raise ModelError(f"{self.model_id} was loaded without a tokenizer; pass tokenizer=... to use text")
        warn_if_truncated(texts, self._tokenizer, self.context_length)
        enc = self._tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                              return_tensors="pt")
        return enc["input_ids"].to(self.device)

    def _encode_text_uncached(self, texts: list[str]) -> Tensor:
        ids = self.tokenize(texts)
        out = self.model.get_text_features(input_ids=ids)
        return out if isinstance(out, Tensor) else out.pooler_output
