"""The engine's configs: meta-training (``TrainConfig`` and its sections), prompt tuning, tiny-CLIP pretraining.

Plain dataclasses with a comment per field and no torch import: they are the one home of every default (the YAML
files under configs/ hold only what differs, and the CLI reads its defaults from here without loading torch).
``check_config`` adds the semantic checks the loader's type checks cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..modeling.config import INPUT_KINDS, SegmenterConfig

KINDS = INPUT_KINDS  # episode kinds and validation modes are the input kinds a head answers


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
    """Augmented views: a fixed number per image, each encoded once (see ``vlfss.engine.views``)."""

    views: int = 1  # augmented views per training image (0: no augmentation)
    prob: float = 0.5  # chance that an episode image is one of its views instead of the original
    hflip: float = 0.5  # chance a view is mirrored
    scale_min: float = 0.75  # scale-crop range (log-uniform), cropped back to the image size
    scale_max: float = 1.33  # upper end of that range
    jitter: float = 0.3  # brightness / contrast / saturation jitter
    hue: float = 0.03  # hue jitter in turns
    cutmix: float = 0.2  # chance a view pastes a CutMix box from another pool image
    mixup: float = 0.0  # chance a view is a Mixup blend with another pool image (dominant mask)
    blur: float = 0.0  # chance a view is Gaussian-blurred, sigma uniform in (0, blur_sigma] (robustness)
    blur_sigma: float = 1.5  # largest blur sigma in pixels
    jpeg: float = 0.0  # chance a view is JPEG-compressed, quality uniform in jpeg_quality..95
    jpeg_quality: int = 20  # lowest JPEG quality
    resample: float = 0.0  # chance a view is resized by a factor in [resample_min, 1] and back (a lower resolution)
    resample_min: float = 0.5  # smallest resample factor


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
    data: DataConfig = field(default_factory=DataConfig)  # benchmark, fold and classes
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)  # the mix of episode kinds
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # augmented views of the image pool
    val: ValConfig = field(default_factory=ValConfig)  # validation on the fold's novel classes
    out_dir: str = "runs/train"  # checkpoints, log.jsonl, summary.json and the final head.safetensors
    init_head_path: str | None = None  # start from these head weights instead of a random init
    export_path: str | None = None  # also copy the final head here (e.g. vlfss/assets/head-vlfss-tiny.safetensors)
    meta_algorithm: Literal["episodic", "fomaml"] = "episodic"  # episodic: minimise the query loss; fomaml:
    # first-order MAML of the head's initialisation (adapt a copy on the supports, then step on the query loss)
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
    weight_decay: float = 0.0001  # AdamW weight decay of the head (none on the prompt context)
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
    for key in ("prob", "hflip", "cutmix", "mixup", "blur", "jpeg", "resample"):
        need(0 <= getattr(au, key) <= 1, f"augment.{key}", f"must be in [0, 1], got {getattr(au, key)}")
    need(0 <= au.jitter <= 1, "augment.jitter", f"must be in [0, 1], got {au.jitter}")
    need(0 <= au.hue <= 0.5, "augment.hue", f"must be in [0, 0.5], got {au.hue}")
    need(0 < au.scale_min <= au.scale_max, "augment.scale_min", "need 0 < scale_min <= scale_max")
    need(0 < au.blur_sigma <= 10, "augment.blur_sigma", f"must be in (0, 10], got {au.blur_sigma}")
    need(1 <= au.jpeg_quality <= 95, "augment.jpeg_quality", f"must be in 1..95, got {au.jpeg_quality}")
    need(0.1 <= au.resample_min <= 1, "augment.resample_min", f"must be in [0.1, 1], got {au.resample_min}")
    need(cfg.val.episodes >= 0, "val.episodes", f"must be >= 0, got {cfg.val.episodes}")
    need(cfg.val.shots >= 1, "val.shots", f"must be >= 1, got {cfg.val.shots}")
    need(all(k >= 1 for k in cfg.val.more_shots), "val.more_shots", f"must be >= 1, got {cfg.val.more_shots}")
    bad = [m for m in cfg.val.modes if m not in KINDS]
    need(not bad, "val.modes", f"unknown mode(s) {bad}; use {list(KINDS)}")
    need(cfg.keep_best or not cfg.fallback_to_training_free, "fallback_to_training_free",
         "needs keep_best: true (it compares the kept head with the step-0 validation)")


@dataclass
class PromptTuneConfig:
    """How the context vectors of a learned prompt are learned (``vlfss tune-prompts``)."""

    n_ctx: int = 4  # context vectors before the class name
    steps: int = 100  # Adam steps (each runs the text tower once)
    lr: float = 0.002  # Adam learning rate
    init: str | None = "a photo of a"  # words the context starts from (None: random)
    dice_weight: float = 1.0  # weight of dice next to BCE
    anchor_weight: float = 1.0  # weight of 1 - cos(learned, hand-written templates' embedding) (KgCoOp-style)
    residual: bool = True  # learn a correction to the templates' embedding: start exactly at the templates
    seed: int = 0  # seeds the random part of the initialisation


@dataclass
class PretrainConfig:
    """Tiny-CLIP pretraining on the synthetic world (``vlfss pretrain-clip``; see ``vlfss.engine.pretrain``)."""

    model: str = "vlfss-tiny-vit"  # open_clip config name (registered from vlfss/assets)
    out_dir: str = "runs/tiny_clip"  # checkpoints, log and final weights
    seed: int = 0  # seeds the model init and the scene stream
    steps: int = 3000  # optimiser steps
    batch_size: int = 48  # images per step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.05  # AdamW weight decay (not on norms, biases, embeddings' scale)
    warmup: int = 150  # linear warm-up steps, then cosine decay to 5% of lr
    lse_temperature: float = 1.0  # smooth-max sharpness over patches of the token-wise logits
    w_global: float = 0.5  # weight of the global sigmoid losses
    w_uniformity: float = 0.1  # text-only uniformity loss on the class prompts: breaks the early symmetry
    w_colour_ssl: float = 0.0  # dense colour-invariance loss between two colour remaps of each image (SLIP-style)
    ssl_temperature: float = 0.1  # temperature of that loss
    checkpoint_every: int = 100  # steps between resumable checkpoints
    eval_every: int = 250  # steps between zero-shot dense checks on held-out scenes
    eval_images: int = 96  # held-out scenes for that check
    low_res_steps: int = 0  # first steps on small scenes (fewer tokens, same texture scale): much cheaper
    low_res_size: int = 48  # side of those scenes (positional embeddings interpolated to its grid)
    low_res_batch: int = 96  # batch size during the low-resolution steps
    init_weights: str | None = None  # start from these model weights (safetensors) when out_dir has no checkpoint
    init_logit_bias: float | None = -2.5  # reset the sigmoid bias to about the log-odds of a class being present
    init_logit_scale: float | None = 10.0  # reset the logit scale (not its log) at the start of a run
    scalar_lr_mult: float = 10.0  # learning-rate multiplier for logit_scale and logit_bias
    threads: int = 2  # torch intra-op threads
    workers: int = 1  # scene-generating worker processes


@dataclass
class RobustConfig:
    """Corruption-robust distillation of the tiny CLIP's image tower (``vlfss robust-clip``; ``vlfss.engine.robust``).

    A student copy of the image tower learns to give, on a corrupted scene, the features the frozen teacher gives
    on the clean scene (every block's tokens and the text-aligned tokens); the text tower is not touched."""

    model: str = "vlfss-tiny-vit"  # open_clip config name (registered from vlfss/assets)
    teacher_weights: str | None = None  # the teacher's weights (safetensors); None: the embedded vlfss-tiny weights
    init_visual: str | None = None  # the student's starting image tower (safetensors, e.g. the shipped robust tower
    # vlfss/assets/vlfss-tiny-robust-visual.safetensors); None: a copy of the teacher's
    restore: bool = False  # show the student what the robust tower is shown at inference: views the embedded quality
    # gate flags, filtered by the embedded restorer (deblurred or smoothed); needs the embedded teacher
    out_dir: str = "runs/tiny_clip_robust"  # checkpoints, log and final weights
    seed: int = 0  # seeds the scene pool, the corruptions and the batches
    steps: int = 2500  # optimiser steps
    batch_size: int = 32  # scenes per step
    lr: float = 1e-4  # peak AdamW learning rate (the student starts at the teacher: small steps)
    warmup: int = 100  # linear warm-up steps, then cosine decay to 5% of lr
    pool_images: int = 4000  # scenes generated once (the pretraining stream's images) and re-corrupted every step
    clean_fraction: float = 0.25  # share of each batch left clean (the student must keep the teacher's clean features)
    blur: float = 0.5  # chance of a Gaussian blur, sigma uniform in (0, blur_sigma]
    blur_sigma: float = 1.6  # the largest blur sigma in pixels
    resample: float = 0.5  # chance of a rescale by a factor log-uniform in [resample_min, resample_max]; the
    # encoder input is then resized back, as the segmenter resizes
    resample_min: float = 0.5  # the smallest rescale factor
    resample_max: float = 2.0  # the largest rescale factor
    noise: float = 0.2  # chance of Gaussian sensor noise, sigma uniform in (0, noise_sigma] grey levels
    noise_sigma: float = 15.0  # the largest noise sigma
    jpeg: float = 0.5  # chance of JPEG compression, quality uniform in jpeg_quality..95
    jpeg_quality: int = 15  # the lowest JPEG quality
    w_tokens: float = 1.0  # weight of the final text-aligned tokens' loss (each block's tokens weigh 1)
    bf16: str = "auto"  # autocast of the forward passes: auto (a CPU with bf16 units), fp32, bf16
    checkpoint_every: int = 250  # steps between resumable checkpoints
    eval_every: int = 250  # steps between held-out checks (zero-shot dense mIoU clean and under blur / rescale)
    eval_images: int = 96  # held-out scenes for that check
    threads: int = 2  # torch intra-op threads
