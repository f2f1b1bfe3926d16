"""open_clip ViTs behind the FrozenBackbone interface, and the rules for which weights they load.

``pretrained`` for a built-in open_clip name (``ViT-B-16``, ...):

* ``None``: the name's canonical weights: ``openai`` when open_clip lists that tag for the name (the original
  CLIP weights, the reference most papers use), else the first tag open_clip lists for it (its registry order
  puts a model's original release first). A name open_clip knows no weights for is an error that says to pass
  a checkpoint file or ``random``: a model is never silently random.
* a tag (``openai``, ``laion2b_s34b_b88k``): found in the local cache or downloaded; offline it fails fast.
  A tag that was trained with QuickGELU (all ``openai`` weights) builds the model with QuickGELU, as the
  weights need (open_clip itself only warns about the mismatch).
* a checkpoint file; or ``random``.

``hf-hub:<repo>`` and ``local-dir:<folder>`` names carry their weights; ``pretrained`` may only be ``random``.
open_clip is imported inside functions: it is a heavy optional dependency, loaded when a model is built.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ModelError
from ..dense import BlockParts, ViTParts
from ..prompts import warn_if_truncated
from .base import ASSETS, TextParts, ViTBackbone
from .weights import (
    RANDOM,
    cached_hub_file,
    download_hub_file,
    existing_file,
    hub_file,
    looks_like_path,
    offline_error,
    unreachable_reason,
    weights_id,
)

log = logging.getLogger(__name__)

OFFLINE_FIX = ("Download the checkpoint on a machine with internet access and pass it with --pretrained "
               "/path/to/file (open_clip .bin/.pt/.safetensors), or use local-dir:/path (a folder with "
               "open_clip_config.json and the weights), or set --cache-dir to a folder that already holds it.")
HF_WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip's default weights file name in a hub repo
HF_SAFE_WEIGHTS = "open_clip_model.safetensors"  # ... and the safetensors one it prefers
HF_CONFIG = "open_clip_config.json"
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def register_open_clip_configs() -> None:
    """Make open_clip know the project's model configs (vlfss/assets/*.json). Idempotent."""
    import open_clip

    known = set(open_clip.list_models())
    for cfg in sorted(ASSETS.glob("*.json")):
        if cfg.stem not in known:
            open_clip.add_model_config(cfg)


def default_tag(name: str) -> str | None:
    """The weights a bare open_clip name means (see the module docstring); None when open_clip lists none."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags:
        return None
    return "openai" if "openai" in tags else tags[0]


def resolve_pretrained(name: str, pretrained: str | None) -> str:
    """The weights to load for built-in open_clip ``name``: a known tag, an existing file, or ``random``."""
    import open_clip

    if pretrained == RANDOM:
        return RANDOM
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained is None:
        tag = default_tag(name)
        if tag is None:
            raise ModelError(f"open_clip model {name!r} has no known pretrained weights; pass a checkpoint with "
                             f"--pretrained /path/to/file, or --pretrained {RANDOM} for random weights")
        log.info("%s: no --pretrained given; using its canonical weights %r", name, tag)
        return tag
    if pretrained in tags:
        return pretrained
    if looks_like_path(pretrained) or Path(pretrained).expanduser().exists():
        return existing_file(pretrained, name)
    raise ModelError(f"unknown pretrained tag {pretrained!r} for {name}; known tags: {', '.join(tags) or 'none'}; "
                     f"or pass a local checkpoint file, or --pretrained {RANDOM}")


def _check_plain_vit(name: str) -> None:
    """Refuse towers without a plain ViT (ResNets, timm towers) before any weights are downloaded."""
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)) or vision.get(
            "attentional_pool"):
        raise ModelError(f"open_clip model {name!r} is not a plain ViT; dense features need a CLIP ViT "
                         "(ViT-B-16, ViT-L-14, ...)")


def _tag_checkpoint(name: str, tag: str, cache_dir: str | None) -> str:
    """A local file holding ``tag``'s weights: cached, or downloaded; fails fast when neither can be."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    what = f"the {tag!r} weights of {name}"
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/model/" -> ("org/model", "")
        filename = filename or HF_WEIGHTS
        names = [HF_SAFE_WEIGHTS, filename] if filename == HF_WEIGHTS else [filename]
        cached = cached_hub_file(repo, names, cache_dir)
        if cached:
            return cached
        reason = unreachable_reason()
        if reason:
            raise offline_error(what, reason, OFFLINE_FIX)
        _check_plain_vit(name)  # before a download of hundreds of MB that could not be used
        return download_hub_file(repo, names, cache_dir, what, OFFLINE_FIX)
    url = cfg.get("url", "")
    local = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)  # where open_clip puts it
    if local.is_file():
        return str(local)
    reason = unreachable_reason(url)
    if reason:
        raise offline_error(what, reason, OFFLINE_FIX)
    _check_plain_vit(name)
    try:
        return open_clip.download_pretrained_from_url(url, cache_dir=cache_dir)
    except Exception as e:  # network errors of any kind: say what to do instead
        raise ModelError(f"could not download {what} ({type(e).__name__}). {OFFLINE_FIX}") from None


def _create(name: str, source: str, **kwargs) -> nn.Module:
    """open_clip.create_model with errors that name the weights and the fix."""
    import open_clip

    try:
        return open_clip.create_model(name, **kwargs)
    except Exception as e:  # open_clip raises RuntimeError/ValueError/KeyError for bad files
        first = (str(e).splitlines() or [""])[0][:160]
        raise ModelError(f"could not load {source} into open_clip {name} ({type(e).__name__}: {first}); "
                         "pass a checkpoint of this architecture") from None


def _load_builtin(name: str, pretrained: str | None, cache_dir: str | None) -> tuple[nn.Module, str]:
    """(model, weights id) for a built-in open_clip name."""
    import open_clip

    if name not in open_clip.list_models():
        raise ModelError(f"unknown model {name!r}; `vlfss models` lists the known ones "
                         "(open_clip names such as ViT-B-16, or transformers:<dir>, timm:<name>, hf-hub:<repo>)")
    weights = resolve_pretrained(name, pretrained)
    if weights == RANDOM:
        return _create(name, "random weights", pretrained=None, pretrained_text=False, cache_dir=cache_dir), RANDOM
    if weights not in open_clip.list_pretrained_tags_by_model(name):  # an existing file (checked)
        return _create(name, f"weights file {weights}", pretrained=weights, cache_dir=cache_dir), weights_id(weights)
    tag_cfg = open_clip.get_pretrained_cfg(name, weights)
    path = _tag_checkpoint(name, weights, cache_dir)
    model = _create(name, f"the {weights!r} weights ({path})", pretrained=path, cache_dir=cache_dir,
                    force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                    force_preprocess_cfg={k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg})
    return model, weights


def _local_dir(folder: str, random: bool) -> str:
    """``folder`` of a ``local-dir:`` name, checked: it must hold open_clip_config.json and (unless random) weights."""
    path = Path(folder).expanduser()
    if not (path / HF_CONFIG).is_file():
        raise ModelError(f"local-dir:{folder}: {path / HF_CONFIG} does not exist; the folder needs the model's "
                         f"{HF_CONFIG} and its weights file")
    found = [p for ext in ("*.safetensors", "*.bin", "*.pth", "*.pt") for p in path.glob(ext)]
    if not found and not random:
        raise ModelError(f"local-dir:{folder}: no weights file (.safetensors/.bin/.pth) in {path}; add it, "
                         f"or pass --pretrained {RANDOM} for random weights")
    return str(path)


def _load_schema(name: str, pretrained: str | None, cache_dir: str | None) -> tuple[nn.Module, str]:
    """(model, local-dir name to take the tokenizer from) for ``hf-hub:`` / ``local-dir:`` names."""
    if pretrained not in (None, RANDOM):
        raise ModelError(f"--pretrained {pretrained} is not used with {name}: its weights come with the name; "
                         f"drop --pretrained (or pass --pretrained {RANDOM})")
    random = pretrained == RANDOM
    schema, ident = name.split(":", 1)
    if schema == "hf-hub":
        fix = f"Offline? Download the repository and load it as local-dir:/path. {OFFLINE_FIX}"
        config = hub_file(ident, [HF_CONFIG], cache_dir, f"the config of {name}", fix)
        if not random:
            weights = hub_file(ident, [HF_SAFE_WEIGHTS, HF_WEIGHTS], cache_dir, f"the weights of {name}", fix)
            if Path(weights).parent != Path(config).parent:
                raise ModelError(f"{name}: the cached config and weights are from different revisions; "
                                 "clear that repository from the hub cache and load it again")
        folder = str(Path(config).parent)
    else:
        folder = _local_dir(ident, random)
    local = f"local-dir:{folder}"
    return _create(local, name, load_weights=not random, pretrained_text=not random, cache_dir=cache_dir), local


def _open_clip_block(blk: nn.Module) -> BlockParts:
    attn = blk.attn
    if not isinstance(attn, nn.MultiheadAttention):
        raise ModelError("only open_clip ViTs with standard attention blocks support dense variants")
    heads = attn.num_heads

    def qkv(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        b, length, c = q.shape
        return tuple(t.reshape(b, length, heads, c // heads).transpose(1, 2) for t in (q, k, v))  # type: ignore

    def forward(x: Tensor) -> Tensor:
        """The block as trained. Under CPU autocast (bf16) the same maths on the batch-first tokens: there
        ``nn.MultiheadAttention`` projects its transposed (L x B x C) input through a batched matmul over an
        expanded, materialised copy of the weight (485 x 768 x 2304 for ViT-B-16 at 352 px), which took 86% of the
        time and made bf16 ~30x slower than fp32. In fp32 the block itself runs (its exact numbers)."""
        if not (torch.is_autocast_enabled("cpu") and attn.batch_first and x.device.type == "cpu"):
            return blk(x)
        b, length, c = x.shape
        a = F.scaled_dot_product_attention(*qkv(blk.ln_1(x)))  # B x heads x L x hd
        x = x + blk.ls_1(attn.out_proj(a.transpose(1, 2).reshape(b, length, c)))
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    return BlockParts(ln_1=blk.ln_1, qkv=qkv, out_proj=attn.out_proj, ln_2=blk.ln_2, mlp=blk.mlp,
                      forward=forward, ls_1=blk.ls_1, ls_2=blk.ls_2)


def _vit_parts(visual: nn.Module) -> ViTParts:
    def proj(t: Tensor) -> Tensor:
        return t @ visual.proj if visual.proj is not None else t

    return ViTParts(
        patch_size=visual.patch_size[0], native_grid=tuple(visual.grid_size), patchify=visual.conv1,
        class_embedding=visual.class_embedding, pos_embedding=visual.positional_embedding,
        ln_pre=visual.ln_pre, blocks=[_open_clip_block(b) for b in visual.transformer.resblocks],
        ln_post=visual.ln_post, proj=proj, pool_type=visual.pool_type,
        final_ln_after_pool=bool(getattr(visual, "final_ln_after_pool", False)),
    )


class OpenCLIPBackbone(ViTBackbone):
    """Any open_clip ViT: a built-in name with a tag / checkpoint file / ``random``, ``hf-hub:`` or ``local-dir:``."""

    def __init__(self, name: str, pretrained: str | None = None, cache_dir: str | None = None,
                 taps: tuple[int, ...] | None = None, device: str = "cpu") -> None:
        super().__init__(taps)
        import open_clip

        register_open_clip_configs()
        if name.startswith(("hf-hub:", "local-dir:")):
            model, tokenizer_name = _load_schema(name, pretrained, cache_dir)
            self.model_id = f"open_clip:{name}" + (f"@{RANDOM}" if pretrained == RANDOM else "")
        else:
            model, wid = _load_builtin(name, pretrained, cache_dir)
            tokenizer_name = name
            self.model_id = f"open_clip:{name}@{wid}"
        visual = model.visual
        if not hasattr(visual, "transformer") or getattr(visual, "attn_pool", None) is not None:
            raise ModelError(f"open_clip model {name!r} is not a plain ViT; dense features need a CLIP ViT "
                             "(ViT-B-16, ViT-L-14, ...)")
        self.model = model.to(device)
        self._tokenizer = (open_clip.get_tokenizer(tokenizer_name) if tokenizer_name.startswith("local-dir:")
                           else open_clip.get_tokenizer(tokenizer_name, cache_dir=cache_dir))
        self.patch_size = visual.patch_size[0]
        self.image_size = visual.image_size[0]
        self.embed_dim = int(visual.output_dim)
        self.mean = tuple(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.std = tuple(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        self.context_length = int(getattr(model, "context_length", 77))
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.logit_bias = float(model.logit_bias.detach()) if getattr(model, "logit_bias", None) is not None else None
        self._init_parts(_vit_parts(visual))
        self._freeze()

    def tokenize(self, texts: list[str]) -> Tensor:
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
