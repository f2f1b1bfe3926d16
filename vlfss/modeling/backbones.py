"""Frozen backbones behind one interface, and the one registry that builds them.

``build_backbone(name, pretrained)`` resolves, in order:

* ``transformers:<repo-or-dir>``  a Hugging Face ``CLIPModel`` (adapter, same interface);
* ``timm:<model>``                a visual-only timm model (features for prototypes; no text);
* ``hf-hub:<repo>`` / ``local-dir:<dir>`` / any open_clip model name (``ViT-B-16``...) with
  ``pretrained`` an open_clip tag (``openai``, ``laion2b_s34b_b88k``) or a local checkpoint file;
* ``vlfss-tiny``                  the embedded default: the tiny CLIP trained on the synthetic world.

Every backbone is frozen: parameters never require grad, ``train()`` keeps it in eval mode, and image
features are computed under ``torch.inference_mode``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, ModelError
from .config import ModelDefaults
from .dense import VARIANTS, BlockParts, DenseFeatures, ViTParts, default_taps, interpolate_pos_embed, vit_dense

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # vlfss/assets
TINY_MODEL = "vlfss-tiny-vit"
TINY_WEIGHTS = ASSETS / f"{TINY_MODEL}.safetensors"


def register_open_clip_configs() -> None:
    """Make open_clip know the project's model configs (vlfss/assets/*.json). Idempotent."""
    import open_clip

    known = set(open_clip.list_models())
    for cfg in sorted(ASSETS.glob("*.json")):
        if cfg.stem not in known:
            open_clip.add_model_config(cfg)


class FrozenBackbone(nn.Module):
    """Common interface: ``encode_text``, ``encode_image``, ``dense``; frozen and always in eval mode."""

    model_id: str  # identifies weights for caches and prompt files, e.g. "open_clip:ViT-B-16@openai"
    embed_dim: int  # joint image-text space size D (or feature size for visual-only backbones)
    patch_size: int  # input sides are rounded to multiples of this
    image_size: int  # the input side the model was trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_text: bool = True
    logit_scale: float = 100.0  # exp(logit_scale) of the model: cosine -> logit
    logit_bias: float | None = None  # SigLIP-style bias where the model has one
    context_length: int = 77
    defaults: ModelDefaults = ModelDefaults()  # the model's own variant / templates / prototype features

    def __init__(self) -> None:
        super().__init__()
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self.text_encodes = 0  # strings actually run through the text tower (cache misses)

    # -- frozen-ness ------------------------------------------------------------------------------
    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:  # noqa: ARG002 - frozen: stays in eval
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- text ---------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> Tensor:
        raise ModelError(f"{self.model_id} has no text encoder; use support examples instead of text")

    def _encode_text_uncached(self, texts: list[str]) -> Tensor:
        raise ModelError(f"{self.model_id} has no text encoder; use support examples instead of text")

    def encode_text(self, texts: list[str]) -> Tensor:
        """N x D normalised text embeddings; each distinct string is encoded once per backbone."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            self.text_encodes += len(missing)
            with torch.inference_mode():
                emb = F.normalize(self._encode_text_uncached(missing).float(), dim=-1).cpu()
            for t, e in zip(missing, emb):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts]).to(self.device)

    # -- images -------------------------------------------------------------------------------------
    def dense(self, images: Tensor, variant: str = "plain") -> DenseFeatures:
        raise NotImplementedError

    def encode_image(self, images: Tensor) -> Tensor:
        """B x D normalised global image embeddings (the library's own encode_image)."""
        return F.normalize(self.dense(images).pooled.float(), dim=-1)

    def text_parts(self) -> TextParts:
        raise ModelError(f"{self.model_id} has no text encoder; prompt learning needs a CLIP model")


@dataclass
class TextParts:
    """What a PromptLearner needs to splice learned context into the frozen text tower."""

    token_embedding: Callable[[Tensor], Tensor]  # ids N x L -> N x L x W
    encode_embeddings: Callable[[Tensor, Tensor], Tensor]  # (embeds N x L x W, ids N x L) -> N x D
    tokenize: Callable[[list[str]], Tensor]
    width: int


class _ViTBackbone(FrozenBackbone):
    """Shared dense path for ViT backbones described by ViTParts; caches positional embeddings per grid."""

    def __init__(self, taps: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self._pos_cache: dict[tuple[int, int], Tensor] = {}
        self.taps: tuple[int, ...] = ()
        self._requested_taps = taps

    def _init_parts(self, parts: ViTParts) -> None:
        self.parts = parts
        n = len(parts.blocks)
        self.num_layers = n
        taps = self._requested_taps if self._requested_taps is not None else default_taps(n, 3)
        bad = [t for t in taps if not 0 <= t < n]
        if bad:
            raise InputError(f"tap layers {bad} out of range for a {n}-block model; use indices 0..{n - 1}")
        self.taps = tuple(sorted(taps))
        self.width = parts.class_embedding.shape[-1]

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        if grid not in self._pos_cache:
            with torch.inference_mode():
                self._pos_cache[grid] = interpolate_pos_embed(self.parts.pos_embedding, self.parts.native_grid, grid)
        return self._pos_cache[grid]

    def dense(self, images: Tensor, variant: str = "plain") -> DenseFeatures:
        if variant not in VARIANTS:
            raise InputError(f"unknown dense variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise InputError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        grid = (h // self.patch_size, w // self.patch_size)
        with torch.inference_mode():
            return vit_dense(self.parts, images.to(self.device), variant, self.taps, self.pos_embed_for(grid))


# ------------------------------------------------------------------------------------------ open_clip
def _open_clip_block(blk: nn.Module) -> BlockParts:
    attn = blk.attn
    if not isinstance(attn, nn.MultiheadAttention):
        raise ModelError("only open_clip ViTs with standard attention blocks support dense variants")
    heads = attn.num_heads

    def qkv(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        b, length, c = q.shape
        return tuple(t.reshape(b, length, heads, c // heads).transpose(1, 2) for t in (q, k, v))  # type: ignore

    return BlockParts(ln_1=blk.ln_1, qkv=qkv, out_proj=attn.out_proj, ln_2=blk.ln_2, mlp=blk.mlp,
                      forward=blk, ls_1=blk.ls_1, ls_2=blk.ls_2)


class OpenCLIPBackbone(_ViTBackbone):
    """Any open_clip ViT: pretrained tag, local checkpoint, ``hf-hub:`` or ``local-dir:``."""

    def __init__(self, name: str, pretrained: str | None = None, cache_dir: str | None = None,
                 taps: tuple[int, ...] | None = None, device: str = "cpu") -> None:
        super().__init__(taps)
        import open_clip

        register_open_clip_configs()
        self.model_id = f"open_clip:{name}@{_weights_id(pretrained)}"
        model = _load_open_clip(name, pretrained, cache_dir)
        visual = model.visual
        if not hasattr(visual, "transformer") or getattr(visual, "attn_pool", None) is not None:
            raise ModelError(f"open_clip model {name!r} is not a plain ViT; dense features need a CLIP ViT "
                             "(ViT-B-16, ViT-L-14, ...)")
        self.model = model.to(device)
        self._tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir) if not name.startswith(
            "local-dir:") else open_clip.get_tokenizer(name)
        self.patch_size = visual.patch_size[0]
        self.image_size = visual.image_size[0]
        self.embed_dim = int(visual.output_dim)
        self.mean = tuple(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        self.context_length = int(getattr(model, "context_length", 77))
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.logit_bias = float(model.logit_bias.detach()) if getattr(model, "logit_bias", None) is not None else None
        grid = visual.grid_size

        def proj(t: Tensor) -> Tensor:
            return t @ visual.proj if visual.proj is not None else t

        self._init_parts(ViTParts(
            patch_size=self.patch_size, native_grid=tuple(grid), patchify=visual.conv1,
            class_embedding=visual.class_embedding, pos_embedding=visual.positional_embedding,
            ln_pre=visual.ln_pre, blocks=[_open_clip_block(b) for b in visual.transformer.resblocks],
            ln_post=visual.ln_post, proj=proj, pool_type=visual.pool_type,
            final_ln_after_pool=bool(getattr(visual, "final_ln_after_pool", False)),
        ))
        self._freeze()

    def tokenize(self, texts: list[str]) -> Tensor:
        from .prompts import warn_if_truncated

        warn_if_truncated(texts, self._tokenizer, self.context_length)
        return self._tokenizer(texts).to(self.device)

    def _encode_text_uncached(self, texts: list[str]) -> Tensor:
        return self.model.encode_text(self.tokenize(texts))

    def text_parts(self) -> TextParts:
        m = self.model

        def encode_embeddings(x: Tensor, ids: Tensor) -> Tensor:
            from open_clip.transformer import text_global_pool

            x = x + m.positional_embedding.to(x.dtype)
            x = m.transformer(x, attn_mask=m.attn_mask)
            x = m.ln_final(x)
            x = text_global_pool(x, ids, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
            if isinstance(m.text_projection, nn.Linear):
                return m.text_projection(x)
            return x @ m.text_projection if m.text_projection is not None else x

        return TextParts(token_embedding=m.token_embedding, encode_embeddings=encode_embeddings,
                         tokenize=self.tokenize, width=m.token_embedding.embedding_dim)


def _weights_id(pretrained: str | None) -> str:
    if pretrained is None:
        return "random"
    p = Path(pretrained)
    if p.is_file():
        return f"{p.name}:{p.stat().st_size}"
    return pretrained


def _load_open_clip(name: str, pretrained: str | None, cache_dir: str | None):
    import open_clip

    is_hub = name.startswith(("hf-hub:", "local-dir:"))
    if not is_hub and name not in open_clip.list_models():
        raise ModelError(f"unknown model {name!r}; `vlfss models` lists the known ones "
                         "(open_clip names such as ViT-B-16, or transformers:<dir>, timm:<name>, hf-hub:<repo>)")
    if pretrained and not is_hub and not Path(pretrained).exists():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
            raise ModelError(f"weights file {pretrained!r} does not exist; pass an existing checkpoint path")
        if pretrained not in tags:
            raise ModelError(f"unknown pretrained tag {pretrained!r} for {name}; "
                             f"known tags: {', '.join(tags) or 'none'}"
                             "; or pass a local checkpoint file")
    try:
        return open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir)
    except Exception as e:  # hub/network errors come from deep inside huggingface_hub: say what to do
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ModelError(
            f"could not load weights {pretrained!r} for {name} ({type(e).__name__}: {str(e).splitlines()[0][:160]}). "
            "Offline? Download the checkpoint elsewhere and pass it with --pretrained /path/to/file "
            "(open_clip .bin/.pt/.safetensors), or use local-dir:/path with open_clip_config.json, "
            "or set --cache-dir to a folder that already holds it."
        ) from None


# ------------------------------------------------------------------------------------- transformers
class TransformersCLIPBackbone(_ViTBackbone):
    """A Hugging Face ``transformers`` CLIPModel behind the same interface."""

    def __init__(self, source: str | nn.Module, cache_dir: str | None = None,
                 taps: tuple[int, ...] | None = None, device: str = "cpu", tokenizer=None) -> None:
        super().__init__(taps)
        from transformers import CLIPModel

        if isinstance(source, nn.Module):
            model, name = source, "in-memory"
        else:
            name = source
            try:
                model = CLIPModel.from_pretrained(source, cache_dir=cache_dir)
            except Exception as e:
                raise ModelError(
                    f"could not load transformers CLIP {source!r} ({type(e).__name__}). Offline? Pass a local folder "
                    "holding config.json and model.safetensors (save_pretrained output) as transformers:/path"
                ) from None
            if tokenizer is None:
                from transformers import AutoTokenizer

                try:
                    tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
                except Exception:
                    tokenizer = None
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
        self.mean, self.std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        g = self.image_size // self.patch_size

        def block(layer: nn.Module) -> BlockParts:
            att = layer.self_attn
            heads = att.num_heads

            def qkv(y: Tensor):
                b, length, c = y.shape
                return tuple(p(y).reshape(b, length, heads, c // heads).transpose(1, 2)
                             for p in (att.q_proj, att.k_proj, att.v_proj))

            def forward(x: Tensor) -> Tensor:
                out = layer(x, None) if _layer_takes_two(layer) else layer(x)
                return out[0] if isinstance(out, tuple) else out

            return BlockParts(ln_1=layer.layer_norm1, qkv=qkv, out_proj=att.out_proj, ln_2=layer.layer_norm2,
                              mlp=layer.mlp, forward=forward)

        self._init_parts(ViTParts(
            patch_size=self.patch_size, native_grid=(g, g), patchify=emb.patch_embedding,
            class_embedding=emb.class_embedding, pos_embedding=emb.position_embedding.weight,
            ln_pre=vm.pre_layrnorm, blocks=[block(layer) for layer in vm.encoder.layers],
            ln_post=vm.post_layernorm, proj=model.visual_projection, pool_type="tok",
            final_ln_after_pool=True,
        ))
        self._freeze()

    def tokenize(self, texts: list[str]) -> Tensor:
        if self._tokenizer is None:
            raise ModelError(f"{self.model_id} was loaded without a tokenizer; pass tokenizer=... to use text")
        from .prompts import warn_if_truncated

        warn_if_truncated(texts, self._tokenizer, self.context_length)
        enc = self._tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                              return_tensors="pt")
        return enc["input_ids"].to(self.device)

    def _encode_text_uncached(self, texts: list[str]) -> Tensor:
        ids = self.tokenize(texts)
        out = self.model.get_text_features(input_ids=ids)
        return out if isinstance(out, Tensor) else out.pooler_output


def _layer_takes_two(layer: nn.Module) -> bool:
    import inspect

    params = list(inspect.signature(layer.forward).parameters)
    return len(params) >= 2 and params[1] in ("attention_mask", "causal_attention_mask")


# --------------------------------------------------------------------------------------------- timm
class TimmBackbone(FrozenBackbone):
    """A visual-only timm model (e.g. resnet50, vit_small_patch14_dinov2): features, no text."""

    has_text = False
    defaults = ModelDefaults(variant="plain")  # no text, no last-block rewrite: plain features for prototypes

    def __init__(self, name: str, pretrained: str | None = None, device: str = "cpu") -> None:
        super().__init__()
        import timm

        if name not in timm.list_models():
            raise ModelError(f"unknown timm model {name!r}; see timm.list_models()")
        kwargs: dict = {"features_only": True, "out_indices": (-3, -2, -1)}
        try:
            if pretrained and Path(pretrained).is_file():
                model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": pretrained}, **kwargs)
            else:
                model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
        except Exception as e:
            raise ModelError(f"could not build timm model {name!r} with weights {pretrained!r} ({type(e).__name__}); "
                             "offline, pass a local weights file as --pretrained /path/to/file") from None
        self.model = model.to(device)
        self.model_id = f"timm:{name}@{_weights_id(pretrained)}"
        info = model.feature_info
        self.embed_dim = int(info.channels()[-1])
        self.patch_size = int(info.reduction()[-1])
        cfg = model.pretrained_cfg
        self.image_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self.taps = tuple(range(len(info.channels())))
        self._freeze()

    def dense(self, images: Tensor, variant: str = "plain") -> DenseFeatures:
        if variant != "plain":
            raise InputError(f"dense variant {variant!r} needs a CLIP ViT; {self.model_id} only supports 'plain'")
        with torch.inference_mode():
            feats = self.model(images.to(self.device))
            h, w = feats[-1].shape[-2:]
            taps = [F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False) for f in feats]
            z = feats[-1]
            return DenseFeatures(taps=taps, z=z, pooled=z.mean((2, 3)))


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    builder: Callable[..., FrozenBackbone]
    defaults: ModelDefaults  # the model's own defaults (variant, templates, prototype features)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, description: str, defaults: ModelDefaults = ModelDefaults()) -> Callable:
    """Decorator: register a builder ``(pretrained, cache_dir, device, taps) -> FrozenBackbone`` under ``name``,
    with the model's own ``defaults`` (``build_backbone`` attaches them to the backbone it builds)."""

    def deco(fn: Callable[..., FrozenBackbone]) -> Callable[..., FrozenBackbone]:
        _REGISTRY[name] = BackboneSpec(name, description, fn, defaults)
        return fn

    return deco


# The tiny CLIP was trained with a token-wise loss, so its last-layer tokens are text-aligned as they are (plain);
# its captions used the "synthetic" phrasings; its second block's tokens (tap 0 of taps 1, 3, 4) match textures
# across instances far better than the caption-trained last layer: 1-shot prototypes 38.5 vs 29.6 mIoU
# (docs/results.md, "Training-free prototypes").
@register_backbone("vlfss-tiny", "tiny CLIP ViT (96 px, patch 6) trained on the synthetic world; embedded, offline",
                   ModelDefaults(variant="plain", templates="synthetic", proto_features="tap0"))
def _build_tiny(pretrained: str | None = None, cache_dir: str | None = None, device: str = "cpu", taps=None):
    weights = pretrained or os.environ.get("VLFSS_TINY_WEIGHTS") or str(TINY_WEIGHTS)
    if not Path(weights).is_file():
        raise ModelError(f"embedded tiny CLIP weights missing at {weights}; reinstall vlfss or pass --pretrained FILE")
    backbone = OpenCLIPBackbone(TINY_MODEL, weights, cache_dir=cache_dir, taps=taps, device=device)
    backbone.model_id = f"vlfss-tiny@{_weights_id(weights)}"
    return backbone


def list_models() -> list[str]:
    """Registered backbone names, then the open_clip architectures this install knows."""
    import open_clip

    register_open_clip_configs()
    return sorted(_REGISTRY) + [f"{m}" for m in open_clip.list_models() if m not in _REGISTRY]


def describe_models() -> list[tuple[str, str]]:
    """(name, description) rows for `vlfss models`."""
    import open_clip

    register_open_clip_configs()
    rows = [(s.name, s.description) for s in _REGISTRY.values()]
    rows += [("transformers:<repo-or-dir>", "Hugging Face transformers CLIPModel (local folder offline)"),
             ("timm:<name>", "visual-only timm model (support examples only; no text)"),
             ("hf-hub:<repo>", "open_clip model from the Hugging Face hub (needs network)")]
    for m in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(m)
        rows.append((m, "open_clip; pretrained tags: " + (", ".join(tags) if tags else "none (pass a file)")))
    return rows


def build_backbone(name: str = "vlfss-tiny", pretrained: str | None = None, cache_dir: str | None = None,
                   device: str = "cpu", taps: tuple[int, ...] | None = None) -> FrozenBackbone:
    """Build a frozen backbone by name (see module docstring for the accepted forms)."""
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        backbone = spec.builder(pretrained=pretrained, cache_dir=cache_dir, device=device, taps=taps)
        backbone.defaults = spec.defaults
        if name == "vlfss-tiny" and not (backbone.taps and backbone.taps[0] == 1):  # custom taps: tap0 is another
            backbone.defaults = dataclasses.replace(backbone.defaults, proto_features="z")  # layer; use z instead
        return backbone
    if name.startswith("transformers:"):
        return TransformersCLIPBackbone(name.split(":", 1)[1], cache_dir=cache_dir, taps=taps, device=device)
    if name.startswith("timm:"):
        return TimmBackbone(name.split(":", 1)[1], pretrained, device=device)
    return OpenCLIPBackbone(name, pretrained, cache_dir=cache_dir, taps=taps, device=device)
