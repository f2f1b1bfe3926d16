"""The head's file format (safetensors + JSON metadata): save, read, load for a backbone, build untrained.

Format ``vlfss-head/2``: the tensors are the head's state dict (its prior's text buffers included); the metadata
key ``vlfss`` holds JSON with ``format``, ``backbone`` (the model id it was trained on), ``variant`` (the dense
variant it reads), the sizes ``tap_dim`` / ``num_taps`` / ``embed_dim`` / ``prior_bg_prompts``, ``head`` (the
``HeadConfig``, its prior a nested ``TrainingFreeConfig``) and whatever the trainer adds (fold, classes, steps).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from ..config import from_dict
from ..errors import ConfigError, ModelError
from ..io_utils import atomic_save_safetensors
from . import training_free as tf
from .backbones import ASSETS, FrozenBackbone
from .config import HeadConfig
from .head import SegHead
from .prompts import ensemble_text_embeddings, load_templates

HEAD_FORMAT = "vlfss-head/2"
_SIZES = ("tap_dim", "num_taps", "embed_dim", "prior_bg_prompts")


def save_head(head: SegHead, path: str | Path, backbone_id: str, variant: str, extra: dict | None = None) -> Path:
    """Write ``head`` with its config and the backbone it was trained on (atomic)."""
    meta = {"format": HEAD_FORMAT, "backbone": backbone_id, "variant": variant, **head.config_dict(),
            **(extra or {})}
    atomic_save_safetensors({k: v.detach().cpu() for k, v in head.state_dict().items()}, path,
                            metadata={"vlfss": json.dumps(meta)})
    return Path(path)


def read_head_file(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, state dict) of a head checkpoint in the current format, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"head weights {path} do not exist; train one with `vlfss train` or use "
                         "--mode training-free")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vlfss", "{}"))
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ModelError(f"head weights {path} are not a readable safetensors file ({type(e).__name__})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != HEAD_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("vlfss-head/"):
            raise ModelError(f"head {path} is in format {fmt}, this vlfss reads {HEAD_FORMAT}; convert it with "
                             f"`python eval/upgrade_heads.py {path}` (in the vlfss repository) or retrain it")
        raise ModelError(f"{path} is not a vlfss head checkpoint")
    missing = [k for k in ("backbone", "variant", "head", *_SIZES) if k not in meta]
    if missing:
        raise ModelError(f"head {path} is incomplete: its metadata lacks {', '.join(missing)}; retrain it")
    return meta, state


def default_head_path(model: str) -> str | None:
    """The learned head shipped for a model, if any."""
    p = ASSETS / f"head-{model}.safetensors"
    return str(p) if p.is_file() else None


def tap_dim(backbone: FrozenBackbone) -> int:
    """Channels of the backbone's encoder taps (CLIP ViTs: the transformer width; else the embedding size)."""
    return int(getattr(backbone, "width", backbone.embed_dim))


def load_head(path: str | Path, backbone: FrozenBackbone) -> tuple[SegHead, str]:
    """Load a head checkpoint for ``backbone`` (refused when trained on another backbone); returns (head, the
    dense variant it reads)."""
    meta, state = read_head_file(path)
    if meta["backbone"] != backbone.model_id:
        raise ModelError(f"head {path} was trained on {meta['backbone']!r}, not {backbone.model_id!r}; "
                         "train a head for this backbone or use --mode training-free")
    try:
        cfg = from_dict(HeadConfig, meta["head"], "head.")
    except ConfigError as e:
        raise ModelError(f"head {path} records a config this vlfss cannot build: {e}") from None
    sizes = (tap_dim(backbone), len(backbone.taps), backbone.embed_dim)
    if (meta["tap_dim"], meta["num_taps"], meta["embed_dim"]) != sizes:
        raise ModelError(f"head {path} was built for features of sizes {meta['tap_dim']} x {meta['num_taps']} taps "
                         f"/ {meta['embed_dim']}, {backbone.model_id} has {sizes[0]} x {sizes[1]} / {sizes[2]}")
    head = SegHead(*sizes, cfg, int(meta["prior_bg_prompts"]))
    try:
        head.load_state_dict(state)
    except RuntimeError as e:  # missing or unexpected tensors, or other shapes
        first = str(e).strip().splitlines()[-1].strip()
        raise ModelError(f"head weights {path} do not fit the {cfg.dim}-wide head their metadata describes "
                         f"({first[:160]})") from None
    head.eval()
    return head, meta["variant"]


def new_head(backbone: FrozenBackbone, cfg: HeadConfig | None = None) -> SegHead:
    """An untrained head sized for ``backbone``, its prior's text buffers filled from the backbone as
    training-free mode would (``cfg.prior``'s text_scale / text_threshold / background_prompts, else the model's
    logit scale, SigLIP level or background prompts); ``cfg.prior.proto_features`` None becomes the model's
    default, so the file records the concrete choice."""
    cfg = cfg or HeadConfig()
    prior = cfg.prior
    if prior.proto_features is None:
        prior = dataclasses.replace(prior, proto_features=backbone.defaults.proto_features)
        cfg = dataclasses.replace(cfg, prior=prior)
    level = tf.text_level(prior.text_threshold, backbone.logit_bias, backbone.logit_scale)
    bg = None
    if backbone.has_text and level is None:  # background level from prompts, as training-free does
        bg = ensemble_text_embeddings(backbone, prior.background_prompts, load_templates(backbone.defaults.templates))
    head = SegHead(tap_dim(backbone), len(backbone.taps), backbone.embed_dim, cfg, 0 if bg is None else len(bg))
    with torch.no_grad():
        head.prior_scale.fill_(float(prior.text_scale if prior.text_scale is not None else backbone.logit_scale))
        if level is not None:
            head.prior_level.fill_(float(level))
            head.prior_has_level.fill_(1.0)
        if bg is not None:
            head.prior_bg_text.copy_(bg)
    return head
