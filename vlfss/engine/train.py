"""Episodic meta-training of the learned fusion head (and optionally a unified prompt context): ``fit``.

``fit(cfg) -> Path`` trains ``SegHead`` on episodes of a benchmark fold's BASE classes and validates on its NOVEL
classes; ``vlfss train --config FILE [key=value ...]`` is the command line over it. The parts: ``config``
(what decides a run), ``views`` (episode plan, augmented views, episode tensors), ``objective`` (the loss and
first-order MAML), ``validate`` (novel-class scores, keep-best, fallback kinds), ``checkpoint`` (resumable state).

* **Frozen backbone.** It never trains; ``Segmenter.encode`` caches features per image content, and the cache is
  sized to hold the whole pool and its views, which are encoded once before the loop (``summary.json`` counts
  the encodes inside the loop: 0).
* **Distributed.** Under ``torchrun`` each rank takes slots ``range(rank, batch, world)`` of every step; the
  trainable modules (head + prompt context, never the backbone) are wrapped in DDP (gloo on CPU, NCCL on GPU).
  First-order MAML averages its meta-gradients with an explicit all-reduce instead.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..cache import FeatureCache
from ..config import to_dict
from ..data import build_benchmark
from ..data.episodes import EpisodeSampler, shard
from ..errors import ConfigError, InputError
from ..io_utils import atomic_save_safetensors, atomic_write_text
from ..modeling.backbones import build_backbone
from ..modeling.head_file import load_head, new_head, save_head
from ..modeling.prompts import PromptLearner
from ..segmenter import Segmenter
from . import checkpoint as ck
from .config import TrainConfig, check_config
from .distributed import (
    DistContext,
    all_reduce_mean,
    average_gradients,
    cleanup,
    init_distributed,
    replicas_max_difference,
)
from .objective import TrainModule, fomaml_backward
from .run_log import RunLog
from .validate import (
    BEST_FILE,
    STEP0_FILE,
    Best,
    Scores,
    fallback_kinds,
    format_scores,
    load_best,
    read_json,
    update_best,
    validate,
)
from .views import ViewBank, load_planned_episode, plan_episode, precompute_features, prepare_episode

log = logging.getLogger(__name__)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.05 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


# ------------------------------------------------------------------------------------------ setup
def build_data(cfg: TrainConfig) -> tuple[Any, list[int], dict[int, EpisodeSampler], EpisodeSampler | None]:
    """(train benchmark, training classes, an N-way sampler per N, the validation sampler or None)."""
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


@dataclass
class _Run:
    """Everything one training process holds."""

    seg: Segmenter  # the frozen backbone with its feature cache
    variant: str  # dense variant the head reads
    module: TrainModule  # head (+ prompt): what trains
    opt: torch.optim.Optimizer
    base_lrs: list[float]  # peak learning rate per parameter group
    samplers: dict[int, EpisodeSampler]  # by N
    bank: ViewBank  # the training image pool and its views
    val: EpisodeSampler | None  # validation episodes (None: no validation)
    classes: list[int]  # training classes

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def _feature_cache(cfg: TrainConfig, pool: list[int], val: EpisodeSampler | None) -> FeatureCache:
    """A cache that holds every pool view and validation image, so nothing is encoded twice (unless precompute is
    off, where the configured LRU size bounds memory for large datasets)."""
    scfg = cfg.segmenter
    val_images = len({x for sp in val.specs() for x in (sp.query_id, *sp.support_ids)}) if val is not None else 0
    need = len(pool) * (1 + cfg.augment.views) + val_images + 16
    capacity = max(need, scfg.feature_cache_items) if cfg.precompute else scfg.feature_cache_items
    return FeatureCache(capacity, scfg.feature_cache_dir)


def _setup(cfg: TrainConfig, dctx: DistContext) -> _Run:
    """Data, frozen backbone, trainable modules and optimiser; the output folder is checked for space."""
    train, classes, samplers, val = build_data(cfg)
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
    seg.cache = _feature_cache(cfg, pool, val)
    return _Run(seg, variant, module, opt, [g["lr"] for g in groups], samplers, bank, val, classes)


def _prepare_out_dir(cfg: TrainConfig, dctx: DistContext, resume: bool, overwrite: bool) -> Path:
    """The checked output folder; a checkpoint already there needs ``resume`` or ``overwrite`` (which clears it)."""
    out = ck.check_output_dir(cfg.out_dir)
    if ck.has_checkpoint(out) and not resume:
        if not overwrite:
            raise InputError(f"{out} already holds a training checkpoint; pass --resume to continue it, "
                             "--overwrite to start over, or another out_dir=...")
        if dctx.is_main:
            ck.clear_checkpoints(out)
            for name in (BEST_FILE, STEP0_FILE):
                (out / name).unlink(missing_ok=True)
    return out


def _resume(run: _Run, cfg: TrainConfig, dctx: DistContext) -> int:
    """Load the last checkpoint of ``out_dir`` into ``run``; returns its step (0 when there is none)."""
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


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class _Progress:
    """What the loop carries from step to step."""

    logger: RunLog  # log.jsonl (+ TensorBoard)
    val_modes: list[str]  # validated input kinds (the backbone's)
    val_shots: list[int]  # validated shot counts
    start: int  # the step the loop starts at (> 0 when resumed)
    best: Best | None = None  # keep_best: the best validated weights so far
    free: Scores | None = None  # fallback_to_training_free: the step-0 (training-free) validation
    last_val: Scores | None = None  # the latest validation
    recent: list[float] = field(default_factory=list)  # losses since the last log line
    history: list[float] = field(default_factory=list)  # every step's loss
    train_encodes: int = 0  # images encoded inside the loop (0 when precomputed)


def _validate(run: _Run, dctx: DistContext, prog: _Progress) -> Scores:
    return validate(run.seg, run.val, None, prog.val_modes, run.module.head, run.module.prompt, dctx, run.variant,
                    prog.val_shots)


def _start(run: _Run, cfg: TrainConfig, dctx: DistContext, out: Path, start: int) -> _Progress:
    """The loop's state; a fresh keep_best run scores the untrained head first: with the residual prior it is the
    training-free model, a candidate too (its scores are kept in val_step0.json for the fallback and resumes)."""
    prog = _Progress(RunLog(out, dctx.is_main, cfg.tensorboard, append=start > 0),  # a fresh start, a fresh log
                     [m for m in cfg.val.modes if run.seg.backbone.has_text or m == "shots"],
                     list(dict.fromkeys([cfg.val.shots, *cfg.val.more_shots])), start)
    try:
        if cfg.keep_best and start > 0:
            prog.best = load_best(out, run.module, dctx.device)
        if cfg.keep_best and run.val is not None and start == 0:
            prog.last_val = _validate(run, dctx, prog)
            prog.logger.write({"step": 0, "val": prog.last_val})
            prog.best = update_best(prog.best, run.module, out, 0, prog.last_val, dctx.is_main)
            if dctx.is_main:
                atomic_write_text(out / STEP0_FILE, json.dumps(prog.last_val))
        if cfg.fallback_to_training_free:
            prog.free = prog.last_val if start == 0 else read_json(out / STEP0_FILE)
    except BaseException:
        prog.logger.close()
        raise
    return prog


def _train_step(run: _Run, model: nn.Module, cfg: TrainConfig, step: int, dctx: DistContext) -> tuple[float, int]:
    """One optimiser step on this rank's shard of the step's episodes; (local loss, images encoded)."""
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


def _after_step(run: _Run, cfg: TrainConfig, dctx: DistContext, out: Path, prog: _Progress, done: int,
                elapsed: float) -> None:
    """Log, validate (keeping the best) and checkpoint as the config's intervals say."""
    if done % cfg.log_every == 0 or done == cfg.steps:
        prog.logger.write({"step": done, "loss": round(sum(prog.recent) / len(prog.recent), 5),
                           "lr": run.opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 1)})
        prog.recent = []
    if run.val is not None and (done % cfg.epoch_steps == 0 or done == cfg.steps):
        prog.last_val = _validate(run, dctx, prog)
        prog.logger.write({"step": done, "val": prog.last_val})
        log.info("step %d validation (novel classes): %s", done, format_scores(prog.last_val))
        if cfg.keep_best:  # every rank sees the same (all-reduced) scores and keeps the same copy
            prog.best = update_best(prog.best, run.module, out, done, prog.last_val, dctx.is_main, prog.free)
    if dctx.is_main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
        meta = {"backbone": run.seg.backbone.model_id, "variant": run.variant, "config": to_dict(cfg)}
        ck.save_checkpoint(out, done, dict(run.module.state_dict()), meta,
                           {"optimizer": run.opt.state_dict(), **ck.rng_state()}, cfg.keep_checkpoints)


def _loop(run: _Run, model: nn.Module, cfg: TrainConfig, dctx: DistContext, out: Path, prog: _Progress,
          on_step: Callable[[int, float], None] | None) -> None:
    """Steps ``prog.start .. cfg.steps``."""
    t0 = time.time()
    bar = tqdm(range(prog.start, cfg.steps), initial=prog.start, total=cfg.steps, desc="train", unit="step",
               disable=not (cfg.progress and dctx.is_main))
    try:
        for step in bar:
            loss_value, encoded = _train_step(run, model, cfg, step, dctx)
            prog.train_encodes += encoded
            loss_mean = all_reduce_mean(loss_value, dctx)
            prog.recent.append(loss_mean)
            prog.history.append(loss_mean)
            bar.set_postfix(loss=f"{loss_mean:.4f}")
            _after_step(run, cfg, dctx, out, prog, step + 1, time.time() - t0)
            if on_step is not None:
                on_step(step + 1, loss_mean)
    finally:
        bar.close()


def _keep_best(run: _Run, cfg: TrainConfig, prog: _Progress) -> dict[str, Any]:
    """Load the best validated weights (when kept) and, with the fallback, restrict the head to the kinds it won;
    returns what the summary records about it."""
    best = prog.best
    if best is None:
        return {}
    run.module.load_state_dict(best.state, strict=True)
    info: dict[str, Any] = {"best_step": best.step, "last_val": prog.last_val}
    prog.last_val = best.val
    log.info("keeping the step-%d head (best mean validation mIoU %.1f)", best.step, 100 * best.score)
    if cfg.fallback_to_training_free:
        use_for = fallback_kinds(best.val, prog.free)
        run.module.head.cfg = replace(run.module.head.cfg, use_for=use_for)
        info["use_for"] = use_for
        log.info("the head answers %s; the training-free model the rest", ", ".join(use_for) or "nothing")
    return info


def _write_outputs(run: _Run, cfg: TrainConfig, dctx: DistContext, summary: dict[str, Any]) -> Path:
    """head.safetensors (+ prompt.safetensors, export copy, rank weights) and summary.json."""
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


def _finish(run: _Run, cfg: TrainConfig, dctx: DistContext, prog: _Progress, precomputed: int,
            wall_s: float) -> Path:
    """The kept weights, the replica check, the summary and the output files."""
    run.module.eval()
    best_info = _keep_best(run, cfg, prog)
    diff = replicas_max_difference([p.detach() for p in run.params], dctx)
    if diff > 0:
        log.warning("replicas differ by up to %.3g after training", diff)
    history = prog.history
    summary = {"steps": cfg.steps, "started_at_step": prog.start, "world": dctx.world,
               "first_loss": history[0] if history else None,
               "last_loss": float(np.mean(history[-max(1, cfg.log_every):])) if history else None,
               "precomputed_images": precomputed, "train_loop_image_encodes": prog.train_encodes,
               "replica_max_difference": diff, "val": prog.last_val, **best_info, "loop_wall_s": round(wall_s, 1)}
    return _write_outputs(run, cfg, dctx, summary)


def fit(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
        on_step: Callable[[int, float], None] | None = None) -> Path:
    """Meta-train the head as ``cfg`` says; returns the final head file (``out_dir/head.safetensors``).

    ``resume``: continue from the last checkpoint in ``out_dir`` (a fresh start if there is none; refused
    if it was written for another model or config). Without ``resume`` an existing checkpoint is an error
    unless ``overwrite``. ``on_step(step, loss)`` is called after every optimiser step.
    """
    dctx = init_distributed(cfg.segmenter.device)
    try:
        check_config(cfg, dctx.world)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        out = _prepare_out_dir(cfg, dctx, resume, overwrite)
        run = _setup(cfg, dctx)
        start = _resume(run, cfg, dctx) if resume else 0
        precomputed = 0
        if cfg.precompute:
            precomputed = precompute_features(run.seg, run.bank, cfg.augment.views, run.variant,
                                              progress=cfg.progress and dctx.is_main)
            log.info("encoded %d pool images and views once", precomputed)
        model: nn.Module = run.module
        if dctx.distributed and cfg.meta_algorithm == "episodic":
            dev_ids = [dctx.local_rank] if dctx.device.type == "cuda" else None
            model = DistributedDataParallel(run.module, device_ids=dev_ids, find_unused_parameters=True)
        prog = _start(run, cfg, dctx, out, start)
        try:
            t0 = time.time()
            _loop(run, model, cfg, dctx, out, prog, on_step)
        finally:
            prog.logger.close()
        return _finish(run, cfg, dctx, prog, precomputed, time.time() - t0)
    finally:
        cleanup(dctx)
