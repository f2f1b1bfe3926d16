"""The interface every backbone implements (``FrozenBackbone``) and the dense path shared by CLIP ViTs.

A backbone is frozen: its parameters never require grad, ``train()`` keeps it in eval mode, and image
features are computed under ``torch.inference_mode``. Text embeddings are cached per string.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputError, ModelError
from ..config import ModelDefaults
from ..dense import VARIANTS, DenseFeatures, ViTParts, default_taps, interpolate_pos_embed, vit_dense
from ..quality_gate import QualityGate
from ..restore import Restorer

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # vlfss/assets: shipped weights, heads, model configs


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

    def check_texts(self, texts: list[str]) -> None:
        """Warn about class texts this model cannot know (a closed-vocabulary model overrides this).

        Called with the user's class texts, before templates are applied; open-vocabulary CLIPs accept anything.
        """

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

    def fallback_head_path(self, head_path: str | Path) -> str | None:  # noqa: ARG002 - no robust tower here
        """The robust tower's own head paired with ``head_path``, if the model ships one (the tiny CLIP)."""
        return None

    def robust_fallback(self) -> tuple[FrozenBackbone, QualityGate, Restorer | None] | None:
        """A tower for images that look degraded, the gate that decides (``SegmenterConfig.robust_fallback``) and
        the restorer that may filter them first (``SegmenterConfig.deblur``); None for models without one (every
        model but the embedded tiny CLIP)."""
        return None


@dataclass
class TextParts:
    """What a PromptLearner needs to splice learned context into the frozen text tower."""

    token_embedding: Callable[[Tensor], Tensor]  # ids N x L -> N x L x W
    encode_embeddings: Callable[[Tensor, Tensor], Tensor]  # (embeds N x L x W, ids N x L) -> N x D
    tokenize: Callable[[list[str]], Tensor]
    width: int


class ViTBackbone(FrozenBackbone):
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
