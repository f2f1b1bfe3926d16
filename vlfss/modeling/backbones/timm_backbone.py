"""A visual-only timm model behind the FrozenBackbone interface (``timm:<name>``): features for prototypes, no text.

``pretrained``: ``None`` loads timm's default pretrained weights for the name (from the local cache, else the
hub; offline it fails fast), a file path loads that file, ``random`` gives random weights. timm is imported
inside functions: a heavy optional dependency, loaded when such a model is built.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError, ModelError
from ..config import ModelDefaults
from ..dense import DenseFeatures
from .base import FrozenBackbone
from .weights import RANDOM, cached_hub_file, existing_file, offline_error, unreachable_reason, weights_id

_FIX = "Download the weights elsewhere and pass the file with --pretrained /path/to/file"
_HUB_FILES = ["model.safetensors", "pytorch_model.bin"]  # what timm looks for in a hub repo


def _default_weights(name: str) -> tuple[dict, str]:
    """(create_model kwargs, weights id) for timm's default pretrained weights of ``name``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ModelError(f"timm model {name!r} has no known pretrained weights; pass a file with "
                         f"--pretrained /path/to/file, or --pretrained {RANDOM}")
    wid = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else name
    if cfg.hf_hub_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else _HUB_FILES
        cached = cached_hub_file(cfg.hf_hub_id, files, None)
        if cached:  # load the cached file directly: no hub round trips, even when the hub is unreachable
            return {"pretrained": True, "pretrained_cfg_overlay": {"file": cached}}, wid
        reason = unreachable_reason()
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url or "").name
        if cfg.url and cached.is_file():
            return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(cached)}}, wid
        reason = unreachable_reason(cfg.url) if cfg.url else None
    if reason:
        raise offline_error(f"the pretrained weights of timm model {name!r}", reason, _FIX)
    return {"pretrained": True}, wid


def _create(name: str, pretrained: str | None):
    """The timm feature extractor of ``name`` with the weights ``pretrained`` asks for, and its weights id."""
    import timm

    if name not in timm.list_models():
        raise ModelError(f"unknown timm model {name!r}; see timm.list_models()")
    if pretrained == RANDOM:
        kwargs, wid = {"pretrained": False}, RANDOM
    elif pretrained is not None:
        path = existing_file(pretrained, f"timm:{name}")
        kwargs, wid = {"pretrained": True, "pretrained_cfg_overlay": {"file": path}}, weights_id(path)
    else:
        kwargs, wid = _default_weights(name)
    try:
        return timm.create_model(name, features_only=True, out_indices=(-3, -2, -1), **kwargs), wid
    except Exception as e:  # timm raises RuntimeError/OSError/... for bad files and hub errors
        raise ModelError(f"could not build timm model {name!r} with weights {pretrained or 'default'!r} "
                         f"({type(e).__name__}); {_FIX}") from None


class TimmBackbone(FrozenBackbone):
    """A visual-only timm model (e.g. resnet50, vit_small_patch14_dinov2): features, no text."""

    has_text = False
    defaults = ModelDefaults(variant="plain")  # no text, no last-block rewrite: plain features for prototypes

    def __init__(self, name: str, pretrained: str | None = None, device: str = "cpu") -> None:
        super().__init__()
        model, wid = _create(name, pretrained)
        self.model = model.to(device)
        self.model_id = f"timm:{name}@{wid}"
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
