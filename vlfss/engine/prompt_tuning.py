"""Prompt fine-tuning: learn CoOp context vectors for a new class from a handful of labelled images.

The frozen encoder runs once per image (``Segmenter.encode``: dense text-aligned features Z, cached);
each step runs only the text tower on the learned prompt. The loss is the one that matters at use time:
the training-free text rule of ``Segmenter`` gives per-pixel foreground log-odds
``scale * (cos(Z, t) - level)`` (``level``: the model's SigLIP threshold, or the best background-prompt
cosine), upsampled to the encoder input size; BCE + dice against the masks there. The learned prompt
file then works wherever a class name does (``vlfss segment --prompt FILE``); ``vlfss tune-prompts`` is the
command line over ``tune_prompts``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.image import ImageLike, load_image, load_mask
from ..errors import InputError
from ..modeling import functional as fn
from ..modeling.prompts import PromptLearner
from ..segmenter import Segmenter
from .config import PromptTuneConfig

log = logging.getLogger(__name__)


@dataclass
class PromptTuneResult:
    """A learned prompt and how training went."""

    learner: PromptLearner
    losses: list[float] = field(default_factory=list)  # loss per step
    train_iou_templates: float = float("nan")  # IoU on the training images with the hand-written templates
    train_iou_tuned: float = float("nan")  # the same with the learned prompt


def text_logits(z: Tensor, text: Tensor, level: Tensor | float, scale: float) -> Tensor:
    """Foreground log-odds ``scale * (cos(z, text) - level)``: z D x h x w, text D -> h x w."""
    return (fn.cosine_map(z.unsqueeze(0), text.unsqueeze(0))[0, 0] - level) * scale


@dataclass
class _Item:
    z: Tensor  # D x h x w dense features
    level: Tensor | float  # background level (h x w or scalar), fixed
    mask: Tensor  # H' x W' long {0,1,255} at encoder input size


def _items(segmenter: Segmenter, images: Sequence[ImageLike], masks: Sequence[ImageLike]) -> list[_Item]:
    if len(images) == 0:
        raise InputError("prompt tuning needs at least one labelled image (--images and --masks)")
    if len(images) != len(masks):
        raise InputError(f"{len(images)} images but {len(masks)} masks; give one mask per image")
    imgs = [load_image(x, f"image {i + 1}" if not isinstance(x, (str, Path)) else str(x)) for i, x in enumerate(images)]
    ms = [load_mask(m, im.shape, f"mask {i + 1}" + (f" ({m})" if isinstance(m, (str, Path)) else ""), allow_empty=True)
          for i, (m, im) in enumerate(zip(masks, imgs, strict=True))]
    if not any((m == 1).any() for m in ms):
        raise InputError("no mask marks any foreground; mark the class with 1 (or 255) in at least one mask")
    encoded = segmenter.encode(imgs, segmenter.variant)  # the only encoder run: once per image
    items = []
    with torch.no_grad():
        for e, m in zip(encoded, ms, strict=True):
            z = e.z.unsqueeze(0)
            level = segmenter._text_background(z, None)  # the exact rule segment() applies at use time
            mt = torch.from_numpy(m)[None, None].float()
            mt = F.interpolate(mt, size=tuple(e.rgb.shape[-2:]), mode="nearest")[0, 0].long()
            items.append(_Item(e.z, level.detach() if isinstance(level, Tensor) else level, mt))
    return items


def _scale(segmenter: Segmenter) -> float:
    s = segmenter.cfg.training_free.text_scale
    return float(s if s is not None else segmenter.backbone.logit_scale)


def prompt_loss(items: list[_Item], text: Tensor, scale: float, dice_weight: float = 1.0) -> Tensor:
    """Mean BCE + dice of the text rule's log-odds (upsampled to each mask) over the labelled images."""
    losses = []
    for it in items:
        lg = text_logits(it.z, text, it.level, scale)[None, None]
        lg = F.interpolate(lg, size=tuple(it.mask.shape), mode="bilinear", align_corners=False)[:, 0]
        losses.append(fn.bce_dice_loss(lg, it.mask.unsqueeze(0), dice_weight))
    return torch.stack(losses).mean()


@torch.no_grad()
def _iou(items: list[_Item], text: Tensor, scale: float) -> float:
    inter = union = 0
    for it in items:
        lg = text_logits(it.z, text, it.level, scale)[None, None]
        pred = F.interpolate(lg, size=tuple(it.mask.shape), mode="bilinear", align_corners=False)[0, 0] > 0
        valid = it.mask != fn.IGNORE
        t = (it.mask == 1) & valid
        p = pred & valid
        inter += int((p & t).sum())
        union += int((p | t).sum())
    return inter / union if union else 1.0


def learn_prompt(segmenter: Segmenter, class_name: str, images: Sequence[ImageLike], masks: Sequence[ImageLike],
                 cfg: PromptTuneConfig | None = None) -> PromptTuneResult:
    """Learn context vectors for ``class_name`` on cached dense features of (images, masks)."""
    cfg = cfg or PromptTuneConfig()
    if not isinstance(class_name, str) or not class_name.strip():
        raise InputError("--class needs a non-empty class name")
    if cfg.steps < 1 or cfg.n_ctx < 1 or not cfg.lr > 0:
        raise InputError(f"need steps >= 1, n_ctx >= 1 and lr > 0, got steps={cfg.steps}, n_ctx={cfg.n_ctx}, "
                         f"lr={cfg.lr}")
    if not segmenter.backbone.has_text:
        raise InputError(f"model {segmenter.backbone.model_id} has no text encoder; prompts need a CLIP model")
    class_name = class_name.strip()
    items = _items(segmenter, images, masks)
    scale = _scale(segmenter)
    torch.manual_seed(cfg.seed)
    pl = PromptLearner(segmenter.backbone, [class_name], n_ctx=cfg.n_ctx, init=cfg.init).to(segmenter.backbone.device)
    template = segmenter.text_embeddings([class_name])[0] if class_name not in segmenter.prompt_learners else None
    result = PromptTuneResult(pl)
    if template is not None:
        result.train_iou_templates = _iou(items, template, scale)
        if cfg.residual:
            pl.set_residual(template)
    opt = torch.optim.Adam([pl.ctx], lr=cfg.lr)
    for step in range(cfg.steps):
        emb = pl()[0]
        loss = prompt_loss(items, emb, scale, cfg.dice_weight)
        if cfg.anchor_weight > 0 and template is not None:  # stay near what the class name already means
            loss = loss + cfg.anchor_weight * (1 - F.cosine_similarity(emb, template.detach(), dim=0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.losses.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            log.info("prompt step %d: loss %.4f", step + 1, result.losses[-1])
    with torch.no_grad():
        result.train_iou_tuned = _iou(items, pl()[0], scale)
    return result


def save_prompt(res: PromptTuneResult, out: str | Path, segmenter: Segmenter, cfg: PromptTuneConfig,
                n_images: int) -> Path:
    """Write a learned prompt with how it was trained in its header (atomic)."""
    extra = {"steps": cfg.steps, "lr": cfg.lr, "anchor_weight": cfg.anchor_weight, "images": n_images,
             "templates": segmenter.cfg.templates or segmenter.backbone.defaults.templates,
             "variant": segmenter.variant,
             "final_loss": res.losses[-1], "train_iou_templates": res.train_iou_templates,
             "train_iou_tuned": res.train_iou_tuned}
    return res.learner.save(out, extra={k: (None if isinstance(v, float) and np.isnan(v) else v)
                                        for k, v in extra.items()})


def tune_prompts(segmenter: Segmenter, class_name: str, images: Sequence[ImageLike], masks: Sequence[ImageLike],
                 out: str | Path, cfg: PromptTuneConfig | None = None) -> Path:
    """Learn a prompt for ``class_name`` and write it to ``out`` (use it with ``vlfss segment --prompt``)."""
    cfg = cfg or PromptTuneConfig()
    return save_prompt(learn_prompt(segmenter, class_name, images, masks, cfg), out, segmenter, cfg, len(images))
