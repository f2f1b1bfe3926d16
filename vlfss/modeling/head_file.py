"""The head's file format (safetensors + JSON metadata): save, read, load for a backbone, build untrained."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ModelError
from ..io_utils import atomic_save_safetensors
from .backbones import ASSETS, FrozenBackbone
from .config import HeadConfig, TrainingFreeConfig
from .head import SegHead
from .prompts import ensemble_text_embeddings, load_templates

HEAD_FORMAT = "vlfss-head/1"


def save_head(head: SegHead, path: str | Path, backbone_id: str, variant: str, extra: dict | None = None) -> Path:
    """Write ``head`` with its config and the backbone it was trained on (atomic)."""
    meta = {"format": HEAD_FORMAT, "backbone": backbone_id, "variant": variant, **head.config_dict(),
            **(extra or {})}
    atomic_save_safetensors({k: v.detach().cpu() for k, v in head.state_dict().items()}, path,
                            metadata={"vlfss": json.dumps(meta)})
    return Path(path)


def read_head_file(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, state dict) of a head checkpoint, with clear errors."""
    from safetensors import safe_open

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
    if meta.get("format") != HEAD_FORMAT:
        raise ModelError(f"{path} is not a vlfss head checkpoint")
    return meta, state


def default_head_path(model: str) -> str | None:
    """The learned head shipped for a model, if any."""
    p = ASSETS / f"head-{model}.safetensors"
    return str(p) if p.is_file() else None


def load_head(path: str | Path, backbone: FrozenBackbone) -> tuple[SegHead, str]:
    """Load a head checkpoint for ``backbone`` (refused when trained on another backbone)."""
    meta, state = read_head_file(path)
    if meta["backbone"] != backbone.model_id:
        raise ModelError(f"head {path} was trained on {meta['backbone']!r}, not {backbone.model_id!r}; "
                         "train a head for this backbone or use --mode training-free")
    cfg = dict(meta["head"])
    cfg.setdefault("residual_prior", False)  # heads saved before the residual prior existed predict on their own
    cfg.setdefault("prior_proto_features", "z")  # ... and before the prior could match prototypes on a tap
    cfg.setdefault("prior_shot_pooling", "max")  # ... or average the shots' prototypes
    cfg.setdefault("prior_cell_norm", False)  # ... or average normalised cells
    cfg.setdefault("prior_metric", "cosine")  # ... or compare cells by Mahalanobis distance
    cfg.setdefault("prior_input", False)  # ... or read the prior as an input
    cfg.setdefault("agnostic_kinds", [])  # ... or see some input kinds only through similarity maps
    head = new_head(backbone, HeadConfig(**cfg))  # the prior's buffers come from the backbone ...
    try:
        missing, unexpected = head.load_state_dict(state, strict=False)  # ... unless the file has them
    except RuntimeError:  # tensor shapes differ: another head size or backbone width
        missing, unexpected = ["shapes differ"], []
    if unexpected or any(not k.startswith("prior_") for k in missing):
        raise ModelError(f"head weights {path} do not fit a {meta['head']} head for {backbone.model_id} "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    head.eval()
    return head, meta["variant"]


def new_head(backbone: FrozenBackbone, cfg: HeadConfig | None = None) -> SegHead:
    """An untrained head sized for ``backbone``."""
    width = getattr(backbone, "width", backbone.embed_dim)
    bg = None
    if backbone.has_text and backbone.logit_bias is None:  # background level from prompts, as training-free does
        templates = load_templates(backbone.defaults.templates)
        bg = ensemble_text_embeddings(backbone, TrainingFreeConfig().background_prompts, templates)
    cfg = cfg or HeadConfig()
    if cfg.prior_proto_features is None:  # the file records the concrete choice
        cfg = dataclasses.replace(cfg, prior_proto_features=backbone.defaults.proto_features)
    head = SegHead(width, len(backbone.taps), backbone.embed_dim, cfg, 0 if bg is None else len(bg))
    with torch.no_grad():
        head.prior_scale.fill_(float(backbone.logit_scale))
        if backbone.logit_bias is not None:
            head.prior_level.fill_(-float(backbone.logit_bias) / float(backbone.logit_scale))
            head.prior_has_level.fill_(1.0)
        if bg is not None:
            head.prior_bg_text.copy_(bg)
    return head

