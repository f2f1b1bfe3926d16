"""Corruption-robust distillation of the tiny CLIP's image tower (``vlfss robust-clip``).

The embedded tiny CLIP tells its texture classes apart by fine detail, which blur, JPEG and rescaling remove:
its heads lost 25-37 mIoU points under a blur of sigma 1 (docs/results.md, "Corruptions"), and heads retrained
on corrupted views could not put back what the frozen features no longer held. So the encoder itself is trained
here, by self-distillation: a student copy of the image tower sees a scene corrupted at random (rescaled and
resized back, blurred, noisy, JPEG-compressed, or clean) and must give the features the frozen teacher gives on
the clean scene, token for token, at every block and at the text-aligned output. Corruptions keep the geometry,
so token p of one view corresponds to token p of the other.

Matching every block keeps what the heads read (their taps, the prototypes' tap and the text-aligned tokens) in
the teacher's space, so the shipped heads and the text tower stay valid; clean scenes in every batch keep the
clean features. No masks and no captions are used: the scenes are the pretraining stream's. Checkpoints use
``vlfss.engine.checkpoint``'s format (atomic, resumable, loaded without pickle).

``restore`` shows the student what the robust tower is shown at inference (the views the embedded quality gate
flags, filtered by the embedded restorer) and ``init_visual`` starts it from a given tower; measured and not
shipped (docs/tiny-clip.md, "Averaging over turns and mirrors", tried and dropped).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from ..config import to_dict
from ..data.perturb import Perturbation, apply_image
from ..data.synthetic import CLASS_NAMES, NUM_CLASSES, SyntheticConfig, generate_scene
from ..errors import ConfigError, InputError
from ..io_utils import atomic_save_safetensors, atomic_write_text
from ..labeling.precision import cpu_flags
from ..modeling.backbones import register_open_clip_configs
from ..modeling.backbones.open_clip_backbone import _vit_parts
from ..modeling.backbones.tiny import TINY_WEIGHTS, load_visual
from ..modeling.dense import ViTParts, vit_dense
from . import checkpoint as ck
from .config import RobustConfig
from .pretrain import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)

FORMAT = "vlfss-tiny-clip-robust"  # the "kind" in a distillation checkpoint's header
RESUME_FREE_KEYS = frozenset({"out_dir", "steps", "checkpoint_every", "eval_every", "eval_images", "threads"})
CHECKS = {"clean": None, "blur:1": Perturbation("blur", 1.0), "scale:0.75": Perturbation("scale", 0.75),
          "jpeg:30": Perturbation("jpeg", 30.0)}  # the held-out check's conditions


# ------------------------------------------------------------------------------------------ corruptions
def to_input(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """H x W x 3 uint8 -> the encoder's normalised 3 x h x w input, resized as the segmenter resizes (bilinear,
    antialiased), so a rescaled image reaches the encoder exactly as it does at inference."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def corrupt(image: np.ndarray, rng: np.random.Generator, cfg: RobustConfig) -> np.ndarray:
    """A random chain of the corruptions real photos carry, each with its chance in ``cfg``: a rescale (log-uniform
    factor), a blur, sensor noise, JPEG; the result may have another size (``to_input`` resizes it back).
    The same corruption code as ``vlfss eval --perturb``."""
    if rng.random() < cfg.resample:
        f = math.exp(rng.uniform(math.log(cfg.resample_min), math.log(cfg.resample_max)))
        image = apply_image(Perturbation("scale", f), image)
    if rng.random() < cfg.blur:
        image = apply_image(Perturbation("blur", max(1e-3, float(rng.uniform(0, cfg.blur_sigma)))), image)
    if rng.random() < cfg.noise:
        image = apply_image(Perturbation("noise", max(1e-3, float(rng.uniform(0, cfg.noise_sigma)))), image,
                            seed=int(rng.integers(2**32)))
    if rng.random() < cfg.jpeg:
        image = apply_image(Perturbation("jpeg", float(rng.integers(cfg.jpeg_quality, 96))), image)
    return image


def make_batch(pool: np.ndarray, step: int, cfg: RobustConfig) -> tuple[Tensor, Tensor]:
    """(clean inputs, student inputs) of one step, B x 3 x S x S each, deterministic per (seed, step): scenes from the
    pool turned and flipped alike, ``clean_fraction`` of them left clean for the student too."""
    rng = np.random.default_rng([cfg.seed, step, 11])
    idx = rng.choice(len(pool), size=cfg.batch_size, replace=False)
    imgs = np.rot90(pool[idx], int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        imgs = imgs[:, :, ::-1]
    imgs = np.ascontiguousarray(imgs)
    size = imgs.shape[1:3]
    clean = torch.stack([to_input(x, size) for x in imgs])
    views = [x if rng.random() < cfg.clean_fraction else corrupt(x, rng, cfg) for x in imgs]
    return clean, torch.stack([to_input(x, size) for x in views])


# ------------------------------------------------------------------------------------------ the loss
def tower_features(parts: ViTParts, x: Tensor) -> list[Tensor]:
    """Every block's output map and the text-aligned tokens (the ``plain`` dense output), B x C x h x w each."""
    out = vit_dense(parts, x, "plain", tuple(range(len(parts.blocks))))
    return [*out.taps, out.z]


def distill_loss(student: list[Tensor], teacher: list[Tensor], w_tokens: float) -> tuple[Tensor, list[float]]:
    """Sum over feature levels of the mean squared error divided by the teacher's variance at that level (so every
    block weighs alike whatever its scale); the last level (the text-aligned tokens) weighs ``w_tokens``."""
    parts = [F.mse_loss(s.float(), t.float()) / t.float().var().clamp_min(1e-6) for s, t in zip(student, teacher)]
    total = sum(parts[:-1]) + w_tokens * parts[-1]
    return total, [p.item() for p in parts]


# ------------------------------------------------------------------------------------------ the check
@torch.no_grad()
def dense_text_miou(visual, model, text: Tensor, scenes: list,
                    transform: Callable[[np.ndarray], np.ndarray] | None, prepare: Prepare | None = None) -> float:
    """Class-wise mIoU of zero-shot dense labelling (patch logit > 0 is foreground) of ``scenes`` by the image tower
    ``visual`` against the class-name embeddings ``text`` (C x D, normalised; ``model`` gives the logit scale and
    bias), each image passed through ``transform`` first and resized back to its size (and the batch through
    ``prepare``, the gate and restorer, when the tower is trained on what they give it)."""
    size = scenes[0].image.shape[:2]
    x = torch.stack([to_input(transform(s.image) if transform else s.image, size) for s in scenes])
    if prepare is not None:
        x = prepare(x)[0]
    z = F.normalize(vit_dense(_vit_parts(visual), x, "plain").z, dim=1)  # B x D x h x w
    logits = model.logit_scale.exp() * torch.einsum("bdhw,cd->bchw", z, text) + model.logit_bias
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    best, idx = logits.max(1)
    pred = torch.where(best > 0, idx + 1, torch.zeros_like(idx)).numpy()
    gt = np.stack([s.mask for s in scenes])
    ious = [np.logical_and(pred == c, gt == c).sum() / max(np.logical_or(pred == c, gt == c).sum(), 1)
            for c in range(1, NUM_CLASSES + 1) if (gt == c).any()]
    return float(np.mean(ious))


@torch.no_grad()
def held_out_check(visual, model, tokenizer, seed: int, n: int, prepare: Prepare | None = None) -> dict[str, float]:
    """Zero-shot dense mIoU of the image tower ``visual`` (with ``model``'s frozen text tower) on ``n`` held-out
    scenes, clean and under each of ``CHECKS``' corruptions (through ``prepare`` if given); the class names are
    encoded once."""
    scenes = [generate_scene(seed + 1, i, SyntheticConfig()) for i in range(n)]
    text = F.normalize(model.encode_text(tokenizer(list(CLASS_NAMES))), dim=-1)
    return {name: round(dense_text_miou(visual, model, text, scenes, None if p is None else
                                        (lambda im, p=p: apply_image(p, im, seed=0)), prepare), 4)
            for name, p in CHECKS.items()}


Prepare = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def inference_view(cfg: RobustConfig) -> Prepare | None:
    """With ``cfg.restore``: a function from a batch of normalised encoder inputs to (the inputs as the robust tower
    sees them at inference, B flags, B signed sigmas): the embedded quality gate's decision on the sharp tower's
    taps and the embedded restorer's filter of the flagged rows (``vlfss.modeling.fallback.restore_flagged``, the
    same code as inference). Without it: None (the student sees the corrupted views as they are)."""
    if not cfg.restore:
        return None
    from ..modeling.backbones import build_backbone
    from ..modeling.fallback import restore_flagged
    from ..modeling.quality_gate import gate_features

    if cfg.teacher_weights or cfg.model != "vlfss-tiny-vit":
        raise ConfigError("restore needs the embedded teacher (teacher_weights unset, model vlfss-tiny-vit): the "
                          "quality gate and the restorer are fitted to its features")
    sharp = build_backbone("vlfss-tiny")
    fb = sharp.robust_fallback()
    if fb is None or fb[2] is None:
        raise ConfigError("restore needs the embedded quality gate and restorer, which this installation lacks; "
                          "reinstall vlfss")
    _, gate, restorer = fb
    mean, std = torch.tensor(sharp.mean), torch.tensor(sharp.std)

    @torch.no_grad()
    def prepare(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        taps = sharp.dense(x, "plain").taps
        flags, sigmas, restored = restore_flagged(gate, restorer, gate_features(taps), x, mean, std)
        out = x.clone()
        out[flags] = restored.to(x.dtype)
        return out, flags.cpu(), sigmas

    return prepare


# ------------------------------------------------------------------------------------------ training
def _models(cfg: RobustConfig):
    """(teacher CLIP in eval mode, tokenizer, student image tower): the student starts as the teacher's copy, or
    from ``init_visual``."""
    import open_clip  # heavy; needed only when this runs

    path = Path(cfg.teacher_weights) if cfg.teacher_weights else TINY_WEIGHTS
    if not path.is_file():
        raise ConfigError(f"teacher_weights {path} does not exist; pass the tiny CLIP's .safetensors file")
    register_open_clip_configs()
    model = open_clip.create_model(cfg.model)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    model.eval().requires_grad_(False)
    student = copy.deepcopy(model.visual)
    if cfg.init_visual:
        if not Path(cfg.init_visual).is_file():
            raise ConfigError(f"init_visual {cfg.init_visual} does not exist; pass an image tower's .safetensors file "
                              "(e.g. vlfss/assets/vlfss-tiny-robust-visual.safetensors) or unset it")
        load_visual(student, cfg.init_visual)
    student.train().requires_grad_(True)
    return model, open_clip.get_tokenizer(cfg.model), student


def _use_bf16(cfg: RobustConfig) -> bool:
    """bf16 autocast: on request, or (auto) on a CPU with AMX units, where it ran a training step 1.45x faster
    here; without AMX bf16 is slower than fp32 on CPUs (vlfss.labeling.precision)."""
    if cfg.bf16 not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"bf16 must be auto, fp32 or bf16, got {cfg.bf16!r}")
    return cfg.bf16 == "bf16" or (cfg.bf16 == "auto" and "amx_bf16" in cpu_flags())


def _lr(step: int, cfg: RobustConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def robustify(cfg: RobustConfig, resume: bool = True) -> Path:
    """Distil; checkpoint every ``checkpoint_every`` steps; resume from ``out_dir``'s last checkpoint (``resume=False``
    deletes them first). Returns the exported fp16 weights ``out_dir/<model>.safetensors`` (teacher text tower,
    student image tower): a drop-in file for ``VLFSS_TINY_WEIGHTS`` or the package's asset."""
    if not 0 <= cfg.clean_fraction <= 1 or cfg.batch_size < 1 or cfg.steps < 1:
        raise ConfigError("clean_fraction must be in [0, 1] and batch_size, steps at least 1")
    if not 0 < cfg.resample_min <= cfg.resample_max or not 1 <= cfg.jpeg_quality <= 95:
        raise ConfigError("need 0 < resample_min <= resample_max and jpeg_quality in 1..95")
    bf16 = _use_bf16(cfg)  # a bad value fails before any work
    torch.set_num_threads(cfg.threads)
    out = ck.check_output_dir(cfg.out_dir)
    if not resume:
        ck.clear_checkpoints(out)
    teacher, tokenizer, student = _models(cfg)
    prepare = inference_view(cfg)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    start = 0
    state = ck.load_checkpoint(out) if resume else None
    if state is not None:
        ck.check_compatible(state, cfg.model, to_dict(cfg), RESUME_FREE_KEYS)
        student.load_state_dict(state.tensors)
        opt.load_state_dict(state.state["optimizer"])
        ck.restore_rng(state.state)
        start = state.step
        log.info("resumed from %s at step %d", state.path, start)
    t0 = time.time()
    pool = np.stack([generate_scene(cfg.seed, 1_000_000 + i, SyntheticConfig()).image
                     for i in range(cfg.pool_images)])
    log.info("scene pool: %d images in %.0f s", len(pool), time.time() - t0)
    tparts, sparts = _vit_parts(teacher.visual), _vit_parts(student)
    meta = {"kind": FORMAT, "backbone": cfg.model, "config": to_dict(cfg)}
    with open(out / "log.jsonl", "a") as logf:
        if start == 0:
            rec = {"step": 0, "bf16": bf16, **held_out_check(student, teacher, tokenizer, cfg.seed,
                                                              cfg.eval_images, prepare)}
            logf.write(json.dumps(rec) + "\n")
            log.info("%s", rec)
        for step in range(start, cfg.steps):
            clean, views = make_batch(pool, step, cfg)
            shown = {}
            if prepare is not None:
                views, flags, sigmas = prepare(views)
                shown = {"flagged": int(flags.sum()), "restored": int((sigmas != 0).sum())}
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                with torch.no_grad():
                    target = tower_features(tparts, clean)
                loss, parts = distill_loss(tower_features(sparts, views), target, cfg.w_tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            rec = {"step": step + 1, "loss": round(loss.item(), 4), "levels": [round(p, 4) for p in parts],
                   "lr": _lr(step, cfg), **shown, "elapsed_s": round(time.time() - t0, 1)}
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                rec.update(held_out_check(student, teacher, tokenizer, cfg.seed, cfg.eval_images, prepare))
            if (step + 1) % 10 == 0 or "clean" in rec:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info("%s", rec)
            ck.save_if_due(out, step + 1, cfg.steps, cfg.checkpoint_every, student.state_dict(), meta, opt)
    final = export_weights(cfg, out / f"{cfg.model}.safetensors")
    atomic_write_text(out / "final.json", json.dumps({"steps": cfg.steps, "seed": cfg.seed,
                                                      "wall_s": round(time.time() - t0, 1)}))
    return final


def export_weights(cfg: RobustConfig, dest: str | Path) -> Path:
    """Write the teacher's weights with the image tower from ``out_dir``'s last checkpoint, as fp16 safetensors."""
    state = ck.load_checkpoint(cfg.out_dir)
    if state is None or state.meta.get("kind") != FORMAT:
        raise InputError(f"{cfg.out_dir} holds no robust-distillation checkpoint to export; train first "
                         "(vlfss robust-clip --config ...)")
    teacher, _, _ = _models(cfg)
    tensors = {k: v.detach() for k, v in teacher.state_dict().items()}
    tensors.update({f"visual.{k}": v for k, v in state.tensors.items()})
    tensors = {k: v.to(torch.float16).contiguous() for k, v in tensors.items()}
    atomic_save_safetensors(tensors, dest, metadata={"model": cfg.model, "seed": str(cfg.seed),
                                                     "step": str(state.step), "kind": FORMAT})
    return Path(dest)
