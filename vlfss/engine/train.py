"""Episodic meta-training of the learned fusion head (and optionally a unified prompt context).

``fit(cfg) -> Path`` trains ``SegHead`` on episodes of a benchmark fold's BASE classes and validates on its NOVEL
classes; ``vlfss train --config FILE [key=value ...]`` is the command line over it (``cli_train``), and
``vlfss tune-prompts`` (``cli_tune_prompts``; ``tune_prompts(...) -> Path``) learns prompts for a new class (see
``vlfss.prompt_tuning``).

Choices, in one place:

* **One model for every mode.** Each batch mixes text-only (zero-shot), examples-only (K-shot) and
  text + K-shot episodes (``EpisodeConfig``; K uniform in 1..max_shots) and some N-way episodes (N up to
  ``max_way``). Binary episodes use BCE + dice on the foreground log-odds, N-way ones cross-entropy + dice
  over ``nway_logits`` (background logit 0), exactly the label rule ``Segmenter.segment`` applies.
* **Loss resolution.** The head predicts at 4x the patch grid; its logits are upsampled bilinearly to the
  encoder input size (the image as the encoder saw it, e.g. 96 x 96), and the masks are resized there
  with nearest neighbour. Validation scores at each query's original label size (the strict convention).
* **Frozen features, computed once.** The backbone never trains; ``Segmenter.encode`` caches features per
  image content. Training draws from a fixed pool: every image of the train classes plus ``augment.views``
  augmented views of each, made deterministically from (seed, image, view) and encoded once up front
  (``precompute``) into a cache sized to hold them all, so the training loop re-encodes nothing (the count
  is in ``summary.json``). An episode image uses one of its views with probability ``augment.prob``.
  Views apply flip, scale-crop, colour jitter and, with their own probabilities, CutMix or Mixup with
  another pool image (mixing across episodes without new images per step; Mixup keeps the dominant mask).
* **Determinism.** Episode ``slot`` of step ``s`` is planned from ``SeedSequence([seed, s, slot])`` and
  drawn from the sampler as episode ``s * batch_episodes + slot``; nothing depends on global RNG state,
  the world size or on having resumed, so a resumed run reaches the same weights as an uninterrupted one.
* **Distributed.** Under ``torchrun`` each rank takes slots ``range(rank, batch, world)`` of every step;
  the trainable modules (head + prompt context, never the backbone) are wrapped in DDP (gloo on CPU, NCCL
  on GPU). First-order MAML averages its meta-gradients with an explicit all-reduce instead.
* **Meta algorithms.** ``episodic`` (default) minimises the query loss directly; ``fomaml`` adapts a copy
  of the head for ``inner_steps`` SGD steps on the episode's supports (``vlfss.adapt.support_loss``) and
  applies the query-loss gradient at the adapted weights to the initialisation (first order).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import to_dict
from ..data.episodes import Episode, EpisodeSampler, EpisodeSpec, relabel_query, shard
from ..errors import ConfigError, InputError
from ..io_utils import atomic_write_text
from ..modeling import functional as fn
from ..modeling.head import SegHead
from ..modeling.head_file import save_head
from ..modeling.types import INPUT_KINDS, ClassSpec, Encoded
from ..segmenter import Segmenter, SegmenterConfig
from .prompt_tuning import PromptTuneConfig, learn_prompt, tune_prompts  # noqa: F401 - the public API's home

log = logging.getLogger(__name__)

KINDS = INPUT_KINDS  # episode kinds and validation modes are the input kinds a head answers
_PLAN_TAG = 0x7EA1  # separates the planning stream from other uses of the seed
_VIEW_TAG = 0xA06


# ------------------------------------------------------------------------------------------ configs
@dataclass
class DataConfig:
    """Which benchmark, fold and classes meta-training reads."""

    benchmark: str = "synthetic"  # a build_benchmark name: synthetic, pascal5i, coco20i, fss1000, folder, hf
    data_root: str | None = None  # dataset folder (synthetic: the cache root; None = the default cache)
    fold: int = 0  # train on this fold's base classes, validate on its novel classes
    classes: Literal["base", "all"] = "base"  # "all": every class (the demo head; validation is then not held out)
    train_split: str = "train"  # split the training episodes come from
    val_split: str = "val"  # split the validation episodes come from
    options: dict[str, Any] = field(default_factory=dict)  # reader options for both splits (synthetic: image_size)
    train_options: dict[str, Any] = field(default_factory=dict)  # extra options for the train split (n_images)
    val_options: dict[str, Any] = field(default_factory=dict)  # extra options for the validation split
    query_sampling: Literal["class", "pair"] = "class"  # EpisodeSampler query choice


@dataclass
class EpisodeConfig:
    """The mix of episode kinds, so that one head serves every mode."""

    text_only: float = 0.25  # weight of zero-shot episodes (class text, no examples)
    shots_only: float = 0.35  # weight of examples-only episodes
    text_and_shots: float = 0.4  # weight of text + examples episodes
    max_shots: int = 5  # K is drawn uniformly from 1..max_shots (each class needs max_shots+1 images)
    multi_way: float = 0.25  # fraction of N-way episodes, N uniform in 2..max_way
    max_way: int = 3  # largest N


@dataclass
class AugmentConfig:
    """Augmented views: a fixed number per image, each encoded once (see the module docstring)."""

    views: int = 1  # augmented views per training image (0: no augmentation)
    prob: float = 0.5  # chance that an episode image is one of its views instead of the original
    hflip: float = 0.5  # chance a view is mirrored
    scale_min: float = 0.75  # scale-crop range (log-uniform), cropped back to the image size
    scale_max: float = 1.33
    jitter: float = 0.3  # brightness / contrast / saturation jitter
    hue: float = 0.03  # hue jitter in turns
    cutmix: float = 0.2  # chance a view pastes a CutMix box from another pool image
    mixup: float = 0.0  # chance a view is a Mixup blend with another pool image (dominant mask)


@dataclass
class ValConfig:
    """Validation on the fold's novel classes after every epoch."""

    episodes: int = 60  # episodes per validation (the same ones every time); 0 disables validation
    shots: int = 1  # supports per class in the example modes
    more_shots: list[int] = field(default_factory=list)  # also validate the example modes with these many supports
    # (keys "shots@5", "text+shots@5"); with fallback_to_training_free a kind stays with the head only if it wins
    # at every validated shot count
    modes: list[str] = field(default_factory=lambda: list(KINDS))  # any of text, shots, text+shots
    seed: int = 0  # seeds the validation episodes


@dataclass
class TrainConfig:
    """Everything that decides a meta-training run (``vlfss train --config FILE key=value ...``)."""

    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)  # backbone, variant, templates, head sizes
    data: DataConfig = field(default_factory=DataConfig)
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val: ValConfig = field(default_factory=ValConfig)
    out_dir: str = "runs/train"  # checkpoints, log.jsonl, summary.json and the final head.safetensors
    init_head_path: str | None = None  # start from these head weights instead of a random init
    export_path: str | None = None  # also copy the final head here (e.g. vlfss/assets/head-vlfss-tiny.safetensors)
    meta_algorithm: Literal["episodic", "fomaml"] = "episodic"
    inner_steps: int = 2  # fomaml: SGD steps on the supports per episode
    inner_lr: float = 0.01  # fomaml: inner SGD learning rate
    learn_prompt: bool = False  # also learn one context shared by all class names (CoOp, unified)
    prompt_ctx: int = 4  # context vectors of that prompt
    prompt_lr: float = 0.002  # its learning rate
    steps: int = 1000  # optimiser steps
    epoch_steps: int = 250  # steps between validations
    keep_best: bool = False  # the final head is the one with the best mean validation mIoU, not the last one
    fallback_to_training_free: bool = False  # with keep_best: the exported head answers only the input kinds
    # (text, shots, text+shots) where it beat the untrained head (= the training-free model) on validation
    batch_episodes: int = 4  # episodes per step over all processes (divisible by the world size)
    lr: float = 0.001  # peak AdamW learning rate of the head
    weight_decay: float = 0.0001
    warmup: int = 50  # linear warm-up steps, then cosine decay to 5% of lr
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    dice_weight: float = 1.0  # weight of the dice term next to BCE / CE
    seed: int = 0  # head init, episode plan, augmentation
    threads: int = 0  # torch intra-op threads (0: torch's default)
    precompute: bool = True  # encode the whole image pool (and its views) before training
    checkpoint_every: int = 100  # steps between resumable checkpoints
    keep_checkpoints: int = 2  # checkpoints kept on disk
    log_every: int = 10  # steps between log.jsonl lines
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # also write TensorBoard scalars (only if tensorboard is installed)
    save_rank_weights: bool = False  # every rank writes its final weights as rank<r>.safetensors (replica check)


def check_config(cfg: TrainConfig, world: int = 1) -> None:
    """Semantic checks the type checker cannot do; ConfigError naming the key."""
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}': {msg}")

    for key in ("steps", "epoch_steps", "batch_episodes", "checkpoint_every", "keep_checkpoints", "log_every",
                "prompt_ctx"):
        need(getattr(cfg, key) >= 1, key, f"must be >= 1, got {getattr(cfg, key)}")
    for key in ("lr", "prompt_lr", "inner_lr"):
        need(getattr(cfg, key) > 0, key, f"must be > 0, got {getattr(cfg, key)}")
    for key in ("weight_decay", "grad_clip", "dice_weight", "warmup", "inner_steps", "threads"):
        need(getattr(cfg, key) >= 0, key, f"must be >= 0, got {getattr(cfg, key)}")
    need(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")
    need(cfg.batch_episodes % world == 0, "batch_episodes",
         f"{cfg.batch_episodes} episodes do not divide over {world} processes; use a multiple of {world}")
    ep = cfg.episodes
    for key in ("text_only", "shots_only", "text_and_shots", "multi_way"):
        need(getattr(ep, key) >= 0, f"episodes.{key}", f"must be >= 0, got {getattr(ep, key)}")
    need(ep.text_only + ep.shots_only + ep.text_and_shots > 0, "episodes.text_only",
         "text_only + shots_only + text_and_shots must be > 0")
    need(ep.multi_way <= 1, "episodes.multi_way", f"must be in [0, 1], got {ep.multi_way}")
    need(ep.max_shots >= 1, "episodes.max_shots", f"must be >= 1, got {ep.max_shots}")
    need(ep.max_way >= 1, "episodes.max_way", f"must be >= 1, got {ep.max_way}")
    au = cfg.augment
    need(au.views >= 0, "augment.views", f"must be >= 0, got {au.views}")
    for key in ("prob", "hflip", "cutmix", "mixup"):
        need(0 <= getattr(au, key) <= 1, f"augment.{key}", f"must be in [0, 1], got {getattr(au, key)}")
    need(0 <= au.jitter <= 1, "augment.jitter", f"must be in [0, 1], got {au.jitter}")
    need(0 <= au.hue <= 0.5, "augment.hue", f"must be in [0, 0.5], got {au.hue}")
    need(0 < au.scale_min <= au.scale_max, "augment.scale_min", "need 0 < scale_min <= scale_max")
    need(cfg.val.episodes >= 0, "val.episodes", f"must be >= 0, got {cfg.val.episodes}")
    need(cfg.val.shots >= 1, "val.shots", f"must be >= 1, got {cfg.val.shots}")
    need(all(k >= 1 for k in cfg.val.more_shots), "val.more_shots", f"must be >= 1, got {cfg.val.more_shots}")
    bad = [m for m in cfg.val.modes if m not in KINDS]
    need(not bad, "val.modes", f"unknown mode(s) {bad}; use {list(KINDS)}")
    need(cfg.keep_best or not cfg.fallback_to_training_free, "fallback_to_training_free",
         "needs keep_best: true (it compares the kept head with the step-0 validation)")


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.05 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


# ------------------------------------------------------------------------------------------ episode plan
@dataclass(frozen=True)
class EpisodePlan:
    """What one training episode is: a sampler index, N, K, whether text is given, and a view per image."""

    index: int  # episode index in the N-way sampler
    n_way: int
    shots: int  # 0: text only
    use_text: bool
    views: tuple[int, ...]  # 1 + N*K view ids (query first, supports class-major); 0 = the original image

    @property
    def kind(self) -> str:
        return "text" if self.shots == 0 else ("text+shots" if self.use_text else "shots")


def plan_episode(cfg: TrainConfig, step: int, slot: int, has_text: bool = True) -> EpisodePlan:
    """Episode ``slot`` of ``step``: a pure function of (seed, step, slot) and the config."""
    ep, au = cfg.episodes, cfg.augment
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _PLAN_TAG, step, slot]))
    n = int(rng.integers(2, ep.max_way + 1)) if ep.max_way >= 2 and rng.random() < ep.multi_way else 1
    weights = np.array([ep.text_only, ep.shots_only, ep.text_and_shots] if has_text else [0.0, 1.0, 0.0])
    kind = KINDS[int(rng.choice(3, p=weights / weights.sum()))]
    k = 0 if kind == "text" else int(rng.integers(1, ep.max_shots + 1))
    views = []
    for _ in range(1 + n * k):
        use = au.views > 0 and rng.random() < au.prob
        views.append(int(rng.integers(1, au.views + 1)) if use else 0)
    return EpisodePlan(step * cfg.batch_episodes + slot, n, k, kind != "shots", tuple(views))


# ------------------------------------------------------------------------------------------ augmented views
class ViewBank:
    """Deterministic augmented views of a dataset's images: view 0 is the image itself, view v >= 1 a
    function of (seed, image, v) only, so the same view always has the same pixels (and cache key)."""

    def __init__(self, dataset, pool: Sequence[int], aug: AugmentConfig, seed: int) -> None:
        self.dataset, self.pool, self.aug, self.seed = dataset, list(pool), aug, seed

    def view(self, idx: int, v: int) -> tuple[np.ndarray, np.ndarray]:
        """(image H x W x 3 uint8, label map H x W) of view ``v`` of image ``idx``."""
        from ..data import augment as A

        image, label = self.dataset.load(idx)
        if v == 0:
            return np.require(image, requirements="W"), np.require(label, requirements="W")
        ign = self.dataset.ignore_label
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _VIEW_TAG, idx, v]))
        image, label = A.hflip(image, label, rng, self.aug.hflip)
        h, w = label.shape
        image, label = A.random_scale_crop(image, label, rng, (h, w), (self.aug.scale_min, self.aug.scale_max), ign)
        if self.aug.jitter or self.aug.hue:
            image = A.colour_jitter(image, rng, self.aug.jitter, self.aug.jitter, self.aug.jitter, self.aug.hue)
        r_mix, partner = rng.random(), self.pool[int(rng.integers(len(self.pool)))]
        if partner != idx and r_mix < self.aug.cutmix + self.aug.mixup:
            pimg, plab = self.dataset.load(partner)
            pimg, plab = A.resize_image(pimg, (h, w)), A.resize_mask(plab, (h, w))
            if r_mix < self.aug.cutmix:
                image, label, _ = A.cutmix(image, label, pimg, plab, rng)
            else:
                mixed = A.mixup(image, label, pimg, plab, rng)
                image, label = mixed.image, mixed.mask
        return image, label


def class_mask(label: np.ndarray, c: int, ignore: int) -> np.ndarray:
    """1 where class ``c`` is, 255 where ignored, 0 elsewhere."""
    out = (label == c + 1).astype(np.uint8)
    out[label == ignore] = fn.IGNORE
    return out


def load_planned_episode(bank: ViewBank, spec: EpisodeSpec, plan: EpisodePlan) -> Episode:
    """Load ``spec`` with the plan's view per image; a support whose view lost its object uses the original."""
    ds = bank.dataset
    qi = ds.index_of(spec.query_id)
    qimg, qlab = bank.view(qi, plan.views[0])
    sup_images, sup_masks = [], []
    for j, c in enumerate(spec.class_ids):
        for i, sid in enumerate(spec.supports_of(j)):
            si = ds.index_of(sid)
            v = plan.views[1 + j * spec.k_shot + i]
            img, lab = bank.view(si, v)
            m = class_mask(lab, c, ds.ignore_label)
            if v and not (m == 1).any():
                img, lab = bank.view(si, 0)
                m = class_mask(lab, c, ds.ignore_label)
            sup_images.append(img)
            sup_masks.append(m)
    return Episode(query_image=qimg, query_mask=relabel_query(qlab, spec.class_ids, ds.ignore_label),
                   support_images=sup_images, support_masks=sup_masks, class_ids=list(spec.class_ids),
                   texts=[ds.text_names[c] for c in spec.class_ids], query_id=spec.query_id,
                   support_ids=list(spec.support_ids), n_way=spec.n_way, k_shot=spec.k_shot, index=spec.index)


def pool_views(bank: ViewBank, views: int) -> list[tuple[int, int]]:
    """Every (image, view) pair of the pool."""
    return [(i, v) for i in bank.pool for v in range(views + 1)]


def precompute_features(seg: Segmenter, bank: ViewBank, views: int, variant: str, chunk: int = 64,
                        progress: bool = False) -> int:
    """Encode every view of the pool once (batched); returns the number of images encoded."""
    from tqdm import tqdm

    pairs = pool_views(bank, views)
    before = seg.image_encodes
    for s in tqdm(range(0, len(pairs), chunk), disable=not progress, desc="features", unit="chunk"):
        seg.encode([bank.view(i, v)[0] for i, v in pairs[s:s + chunk]], variant)
    return seg.image_encodes - before


# ------------------------------------------------------------------------------------------ episode tensors
@dataclass
class Prepared:
    """One episode as the head consumes it."""

    query: Encoded
    target: Tensor  # H' x W' long labels 0..N / 255 at encoder input size
    specs: list[ClassSpec]  # text filled in unless it comes from the learned prompt
    class_ids: list[int]  # dataset class ids (rows of the learned prompt)
    use_text: bool


def _to_device(e: Encoded, device: torch.device) -> Encoded:
    if e.z.device == device and e.rgb.device == device:
        return e
    return Encoded(taps=[t.to(device) for t in e.taps], z=e.z.to(device), rgb=e.rgb.to(device), size=e.size)


def resize_labels(mask: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an H x W label map to ``size`` (as Segmenter resizes support masks)."""
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    return F.interpolate(m, size=size, mode="nearest")[0, 0].to(torch.uint8)


def prepare_episode(seg: Segmenter, ep: Episode, use_text: bool, variant: str, device: torch.device,
                    learned_text: bool = False) -> Prepared:
    """Encode (from the cache) and build class specs; text from templates unless ``learned_text``."""
    enc = [_to_device(e, device) for e in seg.encode([ep.query_image, *ep.support_images], variant)]
    q = enc[0]
    size = tuple(q.rgb.shape[-2:])
    target = resize_labels(ep.query_mask, size).long().to(device)
    texts = seg.text_embeddings(ep.texts).to(device) if use_text and not learned_text else None
    specs = []
    for j in range(ep.n_way):
        sup = []
        for i in range(ep.k_shot):
            e = enc[1 + j * ep.k_shot + i]
            sup.append((e, resize_labels(ep.support_masks[j * ep.k_shot + i], tuple(e.rgb.shape[-2:])).to(device)))
        specs.append(ClassSpec(ep.texts[j], texts[j] if texts is not None else None, sup))
    return Prepared(q, target, specs, list(ep.class_ids), use_text)


def episode_loss(head: SegHead, query: Encoded, specs: list[ClassSpec], target: Tensor,
                 dice_weight: float = 1.0) -> Tensor:
    """BCE + dice (one class) or CE + dice over nway_logits (N classes), logits upsampled to ``target``'s size."""
    fg = head([query], specs)  # 1 x N x 4h x 4w
    logits = F.interpolate(fg, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    if len(specs) == 1:
        return fn.bce_dice_loss(logits[:, 0], target.unsqueeze(0), dice_weight)
    return fn.nway_ce_dice_loss(fn.nway_logits(logits), target.unsqueeze(0), dice_weight)


def specs_with_text(p: Prepared, emb: Tensor | None) -> list[ClassSpec]:
    """The episode's specs with rows of a learned prompt table (C x D, by class id) as text where text is used."""
    if emb is None or not p.use_text:
        return p.specs
    return [replace(s, text=emb[c]) for s, c in zip(p.specs, p.class_ids, strict=True)]


class TrainModule(nn.Module):
    """The trainable modules (head, optional unified prompt) and the batch loss: what DDP wraps."""

    def __init__(self, head: SegHead, prompt: nn.Module | None = None, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.head = head
        self.prompt = prompt
        self.dice_weight = dice_weight

    def text_table(self, batch: Sequence[Prepared]) -> Tensor | None:
        if self.prompt is None or not any(p.use_text for p in batch):
            return None
        return self.prompt()

    def forward(self, batch: list[Prepared]) -> Tensor:
        emb = self.text_table(batch)
        losses = [episode_loss(self.head, p.query, specs_with_text(p, emb), p.target, self.dice_weight) for p in batch]
        return torch.stack(losses).mean()


def fomaml_backward(module: TrainModule, batch: list[Prepared], inner_steps: int, inner_lr: float) -> float:
    """First-order MAML: per episode, adapt a copy of the head on its supports (SGD), then put the gradient of
    the query loss at the adapted weights into the initial head's ``.grad`` (and the prompt's, if learned).

    The inner loop changes only the copy; the backbone and the prompt context are never updated there.
    Returns the mean query loss.
    """
    from ..modeling.adapt import support_loss, support_priors

    emb = module.text_table(batch)
    fasts, losses = [], []
    for p in batch:
        fast = copy.deepcopy(module.head)
        inner = torch.optim.SGD(fast.parameters(), lr=inner_lr)
        inner_specs = specs_with_text(p, emb.detach() if emb is not None else None)
        priors = support_priors(fast, inner_specs) if inner_steps else None  # the same for every inner step
        for _ in range(inner_steps):
            loss = support_loss(fast, inner_specs, None, module.dice_weight, priors)
            if loss is None:  # text-only episode: nothing to adapt on
                break
            inner.zero_grad(set_to_none=True)
            loss.backward()
            inner.step()
        fast.zero_grad(set_to_none=True)
        losses.append(episode_loss(fast, p.query, specs_with_text(p, emb), p.target, module.dice_weight))
        fasts.append(fast)
    total = torch.stack(losses).mean()
    total.backward()
    for fast in fasts:
        for hp, fp in zip(module.head.parameters(), fast.parameters(), strict=True):
            if fp.grad is not None:
                hp.grad = fp.grad.clone() if hp.grad is None else hp.grad + fp.grad
    return float(total.detach())


# ------------------------------------------------------------------------------------------ validation
def predict_labels(head: SegHead, query: Encoded, specs: list[ClassSpec]) -> Tensor:
    """H x W labels (0 background, j+1 class j) at the query's original size, as Segmenter.segment computes them."""
    fg = head([query], specs)
    logits = F.interpolate(fn.nway_logits(fg), size=query.size, mode="bilinear", align_corners=False)
    return logits[0].argmax(0)


@torch.no_grad()
def validate(segmenter: Segmenter, sampler: EpisodeSampler, episodes: Sequence[int] | None = None,
             modes: Sequence[str] = KINDS, head: SegHead | None = None, prompt: nn.Module | None = None,
             ctx=None, variant: str | None = None, shots: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """mIoU and FB-IoU (FSSMeter) of ``head`` (default ``segmenter.head``) per mode on ``episodes`` of ``sampler``.

    Modes: ``text`` (zero-shot), ``shots`` (K examples), ``text+shots``. ``shots`` lists the K to score the
    example modes at (default: the sampler's k_shot); the first K's keys are the plain mode names, the others'
    ``"<mode>@<K>"``. Under torch.distributed (``ctx``) each rank scores ``shard(n, rank, world)`` and the counts
    are all-reduced.
    """
    from ..evaluation.metrics import FSSMeter

    head = head if head is not None else segmenter.head
    if head is None:
        raise InputError("validate needs a learned head")
    variant = variant or segmenter.head_variant
    device = next(head.parameters()).device
    idx = list(range(len(sampler)) if episodes is None else episodes)
    if ctx is not None and ctx.distributed:
        idx = [idx[i] for i in shard(len(idx), ctx.rank, ctx.world)]
    shots = list(shots or [sampler.k_shot])
    runs = [(m, 0 if m == "text" else k, m if m == "text" or j == 0 else f"{m}@{k}")
            for j, k in enumerate(shots) for m in modes if m != "text" or j == 0]  # (mode, K, key)
    emb = prompt() if prompt is not None else None
    meters = {key: FSSMeter(sampler.dataset.num_classes) for _, _, key in runs}
    was_training = head.training
    head.eval()
    for i in idx:
        spec = sampler.spec(i)
        for mode, k, key in runs:
            ep = sampler.episode(spec.with_shots(k))
            p = prepare_episode(segmenter, ep, mode != "shots", variant, device, learned_text=emb is not None)
            pred = predict_labels(head, p.query, specs_with_text(p, emb))
            meters[key].update(pred.cpu(), torch.from_numpy(ep.query_mask), ep.class_ids, episode=i)
    head.train(was_training)
    out = {}
    for key, meter in meters.items():
        m = meter.all_reduce() if ctx is not None and ctx.distributed else meter
        out[key] = {"miou": m.miou(), "fb_iou": m.fb_iou()}
    return out


# ------------------------------------------------------------------------------------------ fit
def _build_data(cfg: TrainConfig):
    from ..data import build_benchmark

    d = cfg.data
    train = build_benchmark(d.benchmark, d.data_root, d.train_split, d.fold, **{**d.options, **d.train_options})
    classes = list(range(train.dataset.num_classes)) if d.classes == "all" else train.base_classes()
    samplers = {n: EpisodeSampler(train.dataset, classes, n_way=n, k_shot=cfg.episodes.max_shots, seed=cfg.seed,
                                  num_episodes=2**62, query_sampling=d.query_sampling)
                for n in range(1, cfg.episodes.max_way + 1)}
    val = None
    if cfg.val.episodes > 0:
        vb = build_benchmark(d.benchmark, d.data_root, d.val_split, d.fold, **{**d.options, **d.val_options})
        val = EpisodeSampler(vb.dataset, vb.novel_classes(), n_way=1, seed=cfg.val.seed,
                             k_shot=max([cfg.val.shots, *cfg.val.more_shots]),
                             num_episodes=cfg.val.episodes)
    return train, classes, samplers, val


class _Logger:
    """log.jsonl (+ TensorBoard when asked and installed) on the main rank."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, append: bool) -> None:
        self.enabled = enabled
        self.file = open(out / "log.jsonl", "a" if append else "w") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; logging to log.jsonl only (pip install tensorboard)")

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
                elif isinstance(v, dict):
                    for mode, d in v.items():
                        for name, val in d.items():
                            self.tb.add_scalar(f"{k}/{mode}/{name}", val, rec["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _clear_checkpoints(out: Path) -> None:
    from .checkpoint import POINTER

    (out / POINTER).unlink(missing_ok=True)
    (out / "best.safetensors").unlink(missing_ok=True)
    (out / "val_step0.json").unlink(missing_ok=True)
    for p in list(out.glob("ckpt-*.safetensors")) + list(out.glob("ckpt-*.state.pt")):
        p.unlink(missing_ok=True)


@dataclass
class _Run:
    """Everything one training process holds."""

    seg: Segmenter
    variant: str  # dense variant the head reads
    module: TrainModule
    opt: torch.optim.Optimizer
    base_lrs: list[float]
    samplers: dict[int, EpisodeSampler]  # by N
    bank: ViewBank
    val: EpisodeSampler | None
    classes: list[int]  # training classes

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def _setup(cfg: TrainConfig, dctx) -> _Run:
    """Data, frozen backbone, trainable modules and optimiser; the output folder is checked for space."""
    from ..cache import FeatureCache
    from ..modeling.backbones import build_backbone
    from ..modeling.head_file import load_head, new_head
    from ..modeling.prompts import PromptLearner
    from . import checkpoint as ck

    train, classes, samplers, val = _build_data(cfg)
    scfg = replace(cfg.segmenter, device=str(dctx.device), mode="training-free")
    backbone = build_backbone(scfg.model, scfg.pretrained, scfg.cache_dir, str(dctx.device))
    seg = Segmenter(backbone, scfg)
    variant = seg.variant
    if cfg.learn_prompt and not backbone.has_text:
        raise ConfigError(f"config key 'learn_prompt': model {backbone.model_id} has no text encoder")
    torch.manual_seed(cfg.seed)
    if cfg.init_head_path:
        head, variant = load_head(cfg.init_head_path, backbone)
        seg.head_variant = variant
    else:
        head = new_head(backbone, scfg.head)
    prompt = PromptLearner(backbone, train.dataset.text_names, cfg.prompt_ctx) if cfg.learn_prompt else None
    module = TrainModule(head, prompt, cfg.dice_weight).to(dctx.device)
    module.train()
    n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    ck.check_output_dir(cfg.out_dir, ck.estimate_checkpoint_bytes(n_params, cfg.keep_checkpoints))
    groups = [{"params": list(head.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if prompt is not None:
        groups.append({"params": [prompt.ctx], "lr": cfg.prompt_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups)
    pool = sorted({i for c in classes for i in train.dataset.images_of_class(c)})
    bank = ViewBank(train.dataset, pool, cfg.augment, cfg.seed)
    # The cache holds every pool view and validation image, so nothing is encoded twice (unless precompute is off,
    # where the configured LRU size bounds memory for large datasets).
    val_images = len({x for sp in val.specs() for x in (sp.query_id, *sp.support_ids)}) if val is not None else 0
    need = len(pool) * (1 + cfg.augment.views) + val_images + 16
    capacity = max(need, scfg.feature_cache_items) if cfg.precompute else scfg.feature_cache_items
    seg.cache = FeatureCache(capacity, scfg.feature_cache_dir)
    return _Run(seg, variant, module, opt, [g["lr"] for g in groups], samplers, bank, val, classes)


def _resume(run: _Run, cfg: TrainConfig, dctx) -> int:
    """Load the last checkpoint of ``out_dir`` into ``run``; returns its step (0 when there is none)."""
    from . import checkpoint as ck

    state = ck.load_checkpoint(cfg.out_dir)
    if state is None:
        log.info("no checkpoint in %s: starting from scratch", cfg.out_dir)
        return 0
    ck.check_compatible(state, run.seg.backbone.model_id, to_dict(cfg))
    run.module.load_state_dict({k: v.to(dctx.device) for k, v in state.tensors.items()}, strict=True)
    run.opt.load_state_dict(state.state["optimizer"])
    ck.restore_rng(state.state)
    log.info("resumed from %s at step %d", state.path, state.step)
    return state.step


def _train_step(run: _Run, model: nn.Module, cfg: TrainConfig, step: int, dctx) -> tuple[float, int]:
    """One optimiser step on this rank's shard of the step's episodes; (local loss, images encoded)."""
    from .distributed import average_gradients

    f = lr_factor(step, cfg.steps, cfg.warmup)
    for g, base in zip(run.opt.param_groups, run.base_lrs, strict=True):
        g["lr"] = base * f
    before = run.seg.image_encodes
    batch = []
    has_text, learned = run.seg.backbone.has_text, run.module.prompt is not None
    for slot in shard(cfg.batch_episodes, dctx.rank, dctx.world):
        plan = plan_episode(cfg, step, slot, has_text)
        spec = run.samplers[plan.n_way].spec(plan.index).with_shots(plan.shots)
        ep = load_planned_episode(run.bank, spec, plan)
        batch.append(prepare_episode(run.seg, ep, plan.use_text, run.variant, dctx.device, learned))
    encoded = run.seg.image_encodes - before
    run.opt.zero_grad(set_to_none=True)
    if cfg.meta_algorithm == "fomaml":
        loss_value = fomaml_backward(run.module, batch, cfg.inner_steps, cfg.inner_lr)
        average_gradients(run.params, dctx)
    else:
        loss = model(batch)  # DDP averages the gradients over ranks in backward
        loss.backward()
        loss_value = float(loss.detach())
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    run.opt.step()
    return loss_value, encoded


def _write_outputs(run: _Run, cfg: TrainConfig, dctx, summary: dict[str, Any]) -> Path:
    """head.safetensors (+ prompt.safetensors, export copy, rank weights) and summary.json."""
    from ..io_utils import atomic_save_safetensors, atomic_write_text

    out = Path(cfg.out_dir)
    final = out / "head.safetensors"
    head, prompt = run.module.head, run.module.prompt
    if cfg.save_rank_weights:
        atomic_save_safetensors({k: v.detach().cpu() for k, v in run.module.state_dict().items()},
                                out / f"rank{dctx.rank}.safetensors")
    if dctx.is_main:
        model_id = run.seg.backbone.model_id
        extra = {"fold": cfg.data.fold, "benchmark": cfg.data.benchmark, "train_classes": run.classes,
                 "steps": cfg.steps, "meta_algorithm": cfg.meta_algorithm}
        save_head(head, final, model_id, run.variant, extra=extra)
        if prompt is not None:
            prompt.save(out / "prompt.safetensors", extra={"trained_with_head": True})
        if cfg.export_path:
            save_head(head, cfg.export_path, model_id, run.variant, extra=extra)
        atomic_write_text(out / "summary.json", json.dumps({**summary, "head": str(final)}, indent=2))
    return final


def fit(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
        on_step: Callable[[int, float], None] | None = None) -> Path:
    """Meta-train the head as ``cfg`` says; returns the final head file (``out_dir/head.safetensors``).

    ``resume``: continue from the last checkpoint in ``out_dir`` (a fresh start if there is none; refused
    if it was written for another model or config). Without ``resume`` an existing checkpoint is an error
    unless ``overwrite``. ``on_step(step, loss)`` is called after every optimiser step.
    """
    from tqdm import tqdm

    from . import checkpoint as ck
    from .distributed import all_reduce_mean, cleanup, init_distributed, replicas_max_difference

    dctx = init_distributed(cfg.segmenter.device)
    try:
        check_config(cfg, dctx.world)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        out = ck.check_output_dir(cfg.out_dir)
        if ck.has_checkpoint(out) and not resume:
            if not overwrite:
                raise InputError(f"{out} already holds a training checkpoint; pass --resume to continue it, "
                                 "--overwrite to start over, or another out_dir=...")
            if dctx.is_main:
                _clear_checkpoints(out)
        run = _setup(cfg, dctx)
        start = _resume(run, cfg, dctx) if resume else 0
        precomputed = 0
        if cfg.precompute:
            precomputed = precompute_features(run.seg, run.bank, cfg.augment.views, run.variant,
                                              progress=cfg.progress and dctx.is_main)
            log.info("encoded %d pool images and views once", precomputed)
        model: nn.Module = run.module
        if dctx.distributed and cfg.meta_algorithm == "episodic":
            from torch.nn.parallel import DistributedDataParallel as DDP

            dev_ids = [dctx.local_rank] if dctx.device.type == "cuda" else None
            model = DDP(run.module, device_ids=dev_ids, find_unused_parameters=True)
        meta = {"backbone": run.seg.backbone.model_id, "variant": run.variant, "config": to_dict(cfg)}
        val_modes = [m for m in cfg.val.modes if run.seg.backbone.has_text or m == "shots"]
        val_shots = list(dict.fromkeys([cfg.val.shots, *cfg.val.more_shots]))
        logger = _Logger(out, dctx.is_main, cfg.tensorboard, append=start > 0)  # a fresh start starts a fresh log
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", unit="step",
                   disable=not (cfg.progress and dctx.is_main))
        train_encodes, recent, history, last_val = 0, [], [], None
        best = _load_best(out, run, dctx) if cfg.keep_best and start > 0 else None
        if cfg.keep_best and run.val is not None and start == 0:  # the untrained head is a candidate too: with
            last_val = validate(run.seg, run.val, None, val_modes, run.module.head, run.module.prompt,  # the
                                dctx, run.variant, val_shots)  # residual prior it is the training-free model
            logger.write({"step": 0, "val": last_val})
            best = _update_best(best, run, out, 0, last_val, dctx.is_main)
            if dctx.is_main:  # the training-free scores, kept for fallback_to_training_free (and for resumes)
                atomic_write_text(out / "val_step0.json", json.dumps(last_val))
        free = None  # the training-free (step-0) validation, for fallback_to_training_free
        if cfg.fallback_to_training_free:
            free = last_val if start == 0 else _read_json(out / "val_step0.json")
        t0 = time.time()
        try:
            for step in bar:
                loss_value, encoded = _train_step(run, model, cfg, step, dctx)
                train_encodes += encoded
                done = step + 1
                loss_mean = all_reduce_mean(loss_value, dctx)
                recent.append(loss_mean)
                history.append(loss_mean)
                bar.set_postfix(loss=f"{loss_mean:.4f}")
                if done % cfg.log_every == 0 or done == cfg.steps:
                    logger.write({"step": done, "loss": round(sum(recent) / len(recent), 5),
                                  "lr": run.opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 1)})
                    recent = []
                if run.val is not None and (done % cfg.epoch_steps == 0 or done == cfg.steps):
                    last_val = validate(run.seg, run.val, None, val_modes, run.module.head, run.module.prompt,
                                        dctx, run.variant, val_shots)
                    logger.write({"step": done, "val": last_val})
                    log.info("step %d validation (novel classes): %s", done, _fmt_val(last_val))
                    if cfg.keep_best:  # every rank sees the same (all-reduced) scores and keeps the same copy
                        best = _update_best(best, run, out, done, last_val, dctx.is_main, free)
                if dctx.is_main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                    ck.save_checkpoint(out, done, dict(run.module.state_dict()), meta,
                                       {"optimizer": run.opt.state_dict(), **ck.rng_state()}, cfg.keep_checkpoints)
                if on_step is not None:
                    on_step(done, loss_mean)
        finally:
            bar.close()
            logger.close()
        run.module.eval()
        best_info: dict[str, Any] = {}
        if best is not None:  # the best validated weights become the output
            run.module.load_state_dict(best.state, strict=True)
            best_info = {"best_step": best.step, "last_val": last_val}
            last_val = best.val
            log.info("keeping the step-%d head (best mean validation mIoU %.1f)", best.step, 100 * best.score)
            if cfg.fallback_to_training_free:
                use_for = fallback_kinds(best.val, free)
                run.module.head.cfg = replace(run.module.head.cfg, use_for=use_for)
                best_info["use_for"] = use_for
                log.info("the head answers %s; the training-free model the rest", ", ".join(use_for) or "nothing")
        diff = replicas_max_difference([p.detach() for p in run.params], dctx)
        if diff > 0:
            log.warning("replicas differ by up to %.3g after training", diff)
        summary = {"steps": cfg.steps, "started_at_step": start, "world": dctx.world,
                   "first_loss": history[0] if history else None,
                   "last_loss": float(np.mean(history[-max(1, cfg.log_every):])) if history else None,
                   "precomputed_images": precomputed, "train_loop_image_encodes": train_encodes,
                   "replica_max_difference": diff, "val": last_val, **best_info,
                   "loop_wall_s": round(time.time() - t0, 1)}
        return _write_outputs(run, cfg, dctx, summary)
    finally:
        cleanup(dctx)


def fallback_kinds(trained: dict[str, dict[str, float]], free: dict[str, dict[str, float]] | None) -> list[str]:
    """Input kinds the trained head should answer: those it beat the training-free model on (validation mIoU) at
    every validated shot count (keys ``kind`` and ``kind@K``); a key without both scores is no evidence either way."""
    free = free or {}
    lost = {key.split("@")[0] for key in trained
            if key in free and trained[key]["miou"] <= free[key]["miou"]}
    return [k for k in KINDS if k not in lost]


def _read_json(path: Path) -> Any:
    """A JSON file the run wrote earlier (None if absent); a damaged one is an error naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is damaged ({e}); delete it, or start the run again with --overwrite") from e


@dataclass
class _Best:
    """The best validated weights so far (every rank holds the same copy)."""

    score: float  # mean validation mIoU over the validated inputs
    step: int
    val: dict[str, dict[str, float]]
    state: dict[str, Tensor]


def _update_best(best: _Best | None, run: _Run, out: Path, step: int, val: dict[str, dict[str, float]],
                 write: bool, free: dict[str, dict[str, float]] | None = None) -> _Best | None:
    """Keep a copy of the weights when ``val`` beats the best so far; the main rank also writes best.safetensors
    (atomically) so that a resumed run knows the best it has to beat. With ``free`` (the training-free scores,
    for fallback_to_training_free) a kind scores the better of the head's and the training-free model's
    mIoU, as the exported head will answer it."""
    from ..io_utils import atomic_save_safetensors

    def kind_score(k: str, v: dict[str, float]) -> float:
        return max(v["miou"], free[k]["miou"]) if free and k in free else v["miou"]

    score = float(np.mean([kind_score(k, v) for k, v in val.items()])) if val else float("nan")
    if not np.isfinite(score) or (best is not None and score <= best.score):
        return best
    state = {k: v.detach().clone() for k, v in run.module.state_dict().items()}
    if write:
        atomic_save_safetensors({k: v.cpu() for k, v in state.items()}, out / "best.safetensors",
                                metadata={"vlfss": json.dumps({"step": step, "score": score, "val": val})})
    return _Best(score, step, val, state)


def _load_best(out: Path, run: _Run, dctx) -> _Best | None:
    """The best weights a resumed run had kept (None if it had validated nothing yet)."""
    from safetensors import safe_open

    path = out / "best.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("vlfss", "{}"))
        state = {k: f.get_tensor(k).to(dctx.device) for k in f.keys()}
    if set(state) != set(run.module.state_dict()):
        raise InputError(f"{path} does not hold this run's weights; delete it or pass --overwrite")
    return _Best(float(meta["score"]), int(meta["step"]), meta["val"], state)


def _fmt_val(val: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{m} mIoU {100 * d['miou']:.1f}" for m, d in val.items())


# ------------------------------------------------------------------------------------------ command line
def cli_train(argv: list[str]) -> int:
    """``vlfss train --config FILE [--resume] [--overwrite] [key=value ...]``."""
    from ..config import load_config

    ap = argparse.ArgumentParser(prog="vlfss train", description="Episodic meta-training of the fusion head. "
                                 "Run under `torchrun --nproc_per_node=N -m vlfss.cli train ...` for DDP.")
    ap.add_argument("--config", default=None, help="YAML config (see configs/); keys of vlfss.training.TrainConfig")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    ap.add_argument("--overwrite", action="store_true", help="discard checkpoints already in out_dir")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. steps=200 data.fold=1")
    args = ap.parse_intermixed_args(argv)
    cfg = load_config(TrainConfig, args.config, args.overrides)
    path = fit(cfg, resume=args.resume, overwrite=args.overwrite)
    summary = Path(cfg.out_dir) / "summary.json"
    if summary.is_file() and os.environ.get("RANK", "0") == "0":
        s = json.loads(summary.read_text())
        val = f"; novel-class validation: {_fmt_val(s['val'])}" if s.get("val") else ""
        loss = f", loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}" if s.get("first_loss") is not None else ""
        print(f"trained {s['steps']} steps (from step {s['started_at_step']}){loss}{val}; head: {path}")
    return 0


def cli_tune_prompts(argv: list[str]) -> int:
    """``vlfss tune-prompts --class NAME --images ... --masks ... --out FILE [...]``."""
    from .prompt_tuning import cli_tune_prompts as run

    return run(argv)
