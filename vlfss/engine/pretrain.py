"""Contrastive pretraining of the tiny CLIP on the synthetic world, from image-level captions only.

Masks never reach this training. Each step sees a batch of generated images with their captions and
one randomly worded prompt per class. The loss is a sigmoid image-text loss (SigLIP) in two forms:

* token-wise (FILIP-style late interaction): the logit of (image, class prompt) is a smooth maximum
  over the image's patch tokens of ``scale * cos(patch, text) + bias``, so patch tokens themselves must
  carry the class, which is what dense segmentation later reads;
* global: the average-pooled image embedding against the same prompts, and against every caption of
  the batch, positive where the caption names exactly the image's classes (UniCL-style: no false
  negatives from other images that share the classes).

Why not plain CLIP's InfoNCE over captions: measured on this world, it learns colour or nothing in the time
available. Checkpoints use ``vlfss.engine.checkpoint``'s format (atomic, resumable, loaded without pickle);
``export_weights`` writes the last one as the fp16 safetensors file that ships in the package.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..config import to_dict
from ..data.synthetic import CLASS_NAMES, NUM_CLASSES, SyntheticConfig, class_prompt, generate_scene
from ..errors import ConfigError, InputError
from ..io_utils import atomic_save_safetensors, atomic_write_text
from ..modeling.backbones import register_open_clip_configs
from ..modeling.dense import interpolate_pos_embed
from . import checkpoint as ck
from .config import PretrainConfig

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _SceneStream(torch.utils.data.IterableDataset):
    """Endless batches of (image tensor, caption, class multi-hot), deterministic per (seed, step)."""

    def __init__(self, seed: int, start_step: int, pcfg: PretrainConfig):
        self.seed, self.start, self.pcfg = seed, start_step, pcfg

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        step = self.start + wid
        low = SyntheticConfig(image_size=self.pcfg.low_res_size, texture_scale=1.0)
        full = SyntheticConfig()
        while True:
            views = self.pcfg.w_colour_ssl > 0
            if step < self.pcfg.low_res_steps:
                yield step, _make_batch(self.seed, step, self.pcfg.low_res_batch, low, views)
            else:
                yield step, _make_batch(self.seed, step, self.pcfg.batch_size, full, views)
            step += nw


def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def colour_view(imgs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image a random global colour remap (channel permutation, inversions, gammas): same structure, new colours."""
    out = np.empty_like(imgs)
    x = imgs.astype(np.float32) / 255.0
    for i in range(len(imgs)):
        y = x[i][..., rng.permutation(3)]
        inv = rng.random(3) < 0.5
        y = np.where(inv, 1.0 - y, y)
        y = y ** rng.uniform(0.6, 1.6, size=3)
        out[i] = (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def _make_batch(seed: int, step: int, batch: int, cfg: SyntheticConfig, views: bool = False):
    scenes = [generate_scene(seed, 1_000_000 + step * batch + i, cfg) for i in range(batch)]
    imgs = np.stack([s.image for s in scenes])
    # Free augmentation that keeps the class: flips and 90 degree turns.
    rng = np.random.default_rng([seed, step, 7])
    k = int(rng.integers(4))
    imgs = np.ascontiguousarray(np.rot90(imgs, k, axes=(1, 2)))
    if rng.random() < 0.5:
        imgs = np.ascontiguousarray(imgs[:, :, ::-1])
    target = np.zeros((batch, NUM_CLASSES), np.float32)
    for i, s in enumerate(scenes):
        target[i, s.class_ids] = 1.0
    prompts = [class_prompt(n, rng) for n in CLASS_NAMES]
    if views:  # second view: the same scenes in other colours (rows batch..2*batch-1)
        imgs = np.concatenate([imgs, colour_view(imgs, rng)])
    return _normalise(imgs), [s.caption for s in scenes], torch.from_numpy(target), prompts


def dense_embeddings(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled B x D, patch tokens B x P x D) in the joint space, before normalisation."""
    vis = model.visual
    grid = (images.shape[-2] // vis.patch_size[0], images.shape[-1] // vis.patch_size[1])
    x = vis.conv1(images).flatten(2).transpose(1, 2)  # B x hw x C
    cls = vis.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1).to(x.dtype)
    x = torch.cat([cls, x], 1) + interpolate_pos_embed(vis.positional_embedding, vis.grid_size, grid)
    x = vis.ln_pre(x)
    x = vis.transformer(x)
    x = vis.ln_post(x)
    tokens = x[:, 1:] @ vis.proj
    return tokens.mean(1), tokens


def pretrain_losses(model, images, captions_tok, prompts_tok, target, class_sets, cfg: PretrainConfig):
    """The three sigmoid losses (token-wise, global-vs-prompts, global-vs-captions) and their sum."""
    pooled, tokens = dense_embeddings(model, images)
    tokens = F.normalize(tokens, dim=-1)  # V*B x P x D (V = 2 views with the colour loss)
    pooled = F.normalize(pooled, dim=-1)  # V*B x D
    b = target.shape[0]
    views = tokens.shape[0] // b
    loss_ssl = tokens.new_zeros(())
    if views == 2:
        # Dense colour invariance: the token at (image b, cell p) in view 1 must pick the same image's token
        # at cell p in view 2 among all images' tokens at p. Position cannot help (every candidate shares p),
        # colour cannot help (remapped), so the local structure must be encoded.
        t1, t2 = tokens[:b], tokens[b:]
        logits = torch.einsum("bpd,cpd->pbc", t1, t2) / cfg.ssl_temperature  # P x B x B
        labels = torch.arange(b).expand(logits.shape[0], b)
        loss_ssl = 0.5 * (F.cross_entropy(logits.flatten(0, 1), labels.flatten())
                          + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), labels.flatten()))
        target = target.repeat(2, 1)
    t_cls = F.normalize(model.encode_text(prompts_tok), dim=-1)  # C x D
    t_cap = F.normalize(model.encode_text(captions_tok), dim=-1)  # B x D (captions of view 1)
    scale, bias = model.logit_scale.exp(), model.logit_bias
    patch_logits = scale * torch.einsum("bpd,cd->bpc", tokens, t_cls) + bias  # B x P x C
    r = cfg.lse_temperature
    n = patch_logits.shape[1]
    img_logits = (torch.logsumexp(r * patch_logits, dim=1) - math.log(n)) / r  # B x C
    loss_tok = F.binary_cross_entropy_with_logits(img_logits, target)
    loss_glob = F.binary_cross_entropy_with_logits(scale * pooled @ t_cls.T + bias, target)
    same = torch.tensor([[a == b for b in class_sets] for a in class_sets], dtype=torch.float32)
    loss_cap = F.binary_cross_entropy_with_logits(scale * pooled[:b] @ t_cap.T + bias, same)
    # Uniformity (Wang & Isola 2020) of the class prompt embeddings: a loss on text alone. At random init
    # all prompts embed almost alike, so image gradients cannot tell classes apart; spreading the prompts
    # first lets the image side receive class-specific signal from the first steps.
    d2 = torch.cdist(t_cls, t_cls).pow(2)
    off = ~torch.eye(len(t_cls), dtype=torch.bool)
    loss_unif = torch.logsumexp(-2 * d2[off], 0) - math.log(int(off.sum()))
    total = (loss_tok + cfg.w_global * (loss_glob + loss_cap) + cfg.w_uniformity * loss_unif
             + cfg.w_colour_ssl * loss_ssl)
    return total, {"tok": loss_tok.item(), "glob": loss_glob.item(), "cap": loss_cap.item(),
                   "unif": loss_unif.item(), "ssl": loss_ssl.item()}


@torch.no_grad()
def zero_shot_dense_miou(model, tokenizer, seed: int, n: int, cfg: SyntheticConfig) -> float:
    """Class-wise mIoU of text-only dense labelling on held-out scenes (patch logits > 0 is foreground)."""
    scenes = [generate_scene(seed + 1, i, cfg) for i in range(n)]
    images = _normalise(np.stack([s.image for s in scenes]))
    _, tokens = dense_embeddings(model, images)
    tokens = F.normalize(tokens, dim=-1)
    text = F.normalize(model.encode_text(tokenizer(list(CLASS_NAMES))), dim=-1)
    logits = model.logit_scale.exp() * tokens @ text.T + model.logit_bias  # B x P x C
    g = int(math.sqrt(logits.shape[1]))
    logits = logits.transpose(1, 2).reshape(len(scenes), NUM_CLASSES, g, g)
    logits = F.interpolate(logits, size=cfg.image_size, mode="bilinear", align_corners=False)
    best, idx = logits.max(1)
    pred = torch.where(best > 0, idx + 1, torch.zeros_like(idx)).numpy()
    gt = np.stack([s.mask for s in scenes])
    ious = []
    for c in range(1, NUM_CLASSES + 1):
        inter = np.logical_and(pred == c, gt == c).sum()
        union = np.logical_or(pred == c, gt == c).sum()
        if (gt == c).any():
            ious.append(inter / max(union, 1))
    return float(np.mean(ious))


def _lr(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _param_groups(model, wd: float, scalar_lr_mult: float = 1.0):
    """AdamW groups: decayed matrices; undecayed norms, biases and embeddings; the logit scale and bias.

    The two scalars get their own learning rate: Adam moves a parameter by about ``lr`` per step, so at
    lr 1e-3 a sigmoid bias needs thousands of steps to travel from SigLIP's -10 to the prior log-odds of this
    world (about -2.2: two of twenty classes per image). Measured: after 800 steps at 1.5e-3 it sat at -9.35,
    and the image-text losses stayed at the prior the whole time.
    """
    decay, no_decay, scalars = [], [], []
    for name, p in model.named_parameters():
        if "logit_" in name:
            scalars.append(p)
        elif p.ndim < 2 or "embedding" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd, "lr_mult": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
            {"params": scalars, "weight_decay": 0.0, "lr_mult": scalar_lr_mult}]


# Config keys that may change when a run is continued: more steps, other intervals, threads, where it writes.
RESUME_FREE_KEYS = frozenset({"out_dir", "steps", "checkpoint_every", "eval_every", "eval_images", "threads",
                              "workers", "init_weights"})
FORMAT = "vlfss-tiny-clip-pretrain"  # the "kind" in a pretraining checkpoint's header


def _new_model(cfg: PretrainConfig):
    """The open_clip model and tokenizer of ``cfg.model``, randomly initialised from ``cfg.seed``."""
    import open_clip  # heavy; needed only when pretraining runs

    register_open_clip_configs()
    torch.manual_seed(cfg.seed)
    return open_clip.create_model(cfg.model), open_clip.get_tokenizer(cfg.model)


def _start_state(model, opt: torch.optim.Optimizer, cfg: PretrainConfig, resume: bool) -> int:
    """Resume from ``out_dir``'s last checkpoint (its step), else start at step 0 from ``init_weights`` or the
    random init; a run's first step resets the logit scale and bias as the config says."""
    state = ck.load_checkpoint(cfg.out_dir) if resume else None
    if state is not None:
        ck.check_compatible(state, cfg.model, to_dict(cfg), RESUME_FREE_KEYS)
        model.load_state_dict(state.tensors)
        opt.load_state_dict(state.state["optimizer"])
        ck.restore_rng(state.state)
        log.info("resumed from %s at step %d", state.path, state.step)
        return state.step
    if cfg.init_weights:
        if not Path(cfg.init_weights).is_file():
            raise ConfigError(f"init_weights {cfg.init_weights} does not exist; pass an existing .safetensors file")
        model.load_state_dict({k: v.float() for k, v in load_file(cfg.init_weights).items()})
        log.info("initialised from %s (fresh optimizer, step 0)", cfg.init_weights)
    with torch.no_grad():
        if cfg.init_logit_bias is not None and getattr(model, "logit_bias", None) is not None:
            model.logit_bias.fill_(cfg.init_logit_bias)
        if cfg.init_logit_scale is not None:
            model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    return 0


def _train_step(model, tokenizer, opt: torch.optim.Optimizer, step: int, batch, cfg: PretrainConfig) -> dict:
    """One optimiser step; the log record of its losses."""
    images, captions, target, prompts = batch
    for g in opt.param_groups:
        g["lr"] = _lr(step, cfg) * g.get("lr_mult", 1.0)
    class_sets = [tuple(np.nonzero(t.numpy())[0]) for t in target]
    loss, parts = pretrain_losses(model, images, tokenizer(captions), tokenizer(prompts), target, class_sets, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return {"step": step + 1, "loss": round(loss.item(), 4), **{k: round(v, 4) for k, v in parts.items()},
            "lr": _lr(step, cfg)}


def pretrain(cfg: PretrainConfig, resume: bool = True) -> Path:
    """Train; checkpoint every ``checkpoint_every`` steps (``vlfss.engine.checkpoint``'s format); resume from the
    last checkpoint in ``out_dir`` if there is one (``resume=False`` deletes them and starts over). Returns the
    exported fp16 weights ``out_dir/<model>.safetensors``."""
    torch.set_num_threads(cfg.threads)
    out = ck.check_output_dir(cfg.out_dir)
    if not resume:
        ck.clear_checkpoints(out)
    model, tokenizer = _new_model(cfg)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay, cfg.scalar_lr_mult), lr=cfg.lr,
                            betas=(0.9, 0.98), eps=1e-6)
    start = _start_state(model, opt, cfg, resume)
    scfg = SyntheticConfig()
    loader = torch.utils.data.DataLoader(_SceneStream(cfg.seed, start, cfg), batch_size=None, num_workers=cfg.workers)
    meta = {"kind": FORMAT, "backbone": cfg.model, "config": to_dict(cfg)}
    t0 = time.time()
    model.train()
    with open(out / "log.jsonl", "a") as logf:
        for step, batch in loader:
            if step >= cfg.steps:
                break
            rec = {**_train_step(model, tokenizer, opt, step, batch, cfg), "elapsed_s": round(time.time() - t0, 1)}
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                model.eval()
                rec["zs_dense_miou"] = round(zero_shot_dense_miou(model, tokenizer, cfg.seed, cfg.eval_images, scfg), 4)
                model.train()
            if (step + 1) % 10 == 0 or "zs_dense_miou" in rec:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log.info("%s", rec)
            ck.save_if_due(out, step + 1, cfg.steps, cfg.checkpoint_every, model.state_dict(), meta, opt)
    final = export_weights(out, out / f"{cfg.model}.safetensors")
    atomic_write_text(out / "final.json", json.dumps({"steps": cfg.steps, "seed": cfg.seed,
                                                      "wall_s": round(time.time() - t0, 1)}))
    return final


def export_weights(out_dir: str | Path, dest: str | Path) -> Path:
    """Write the model weights of ``out_dir``'s last checkpoint as float16 safetensors (what ships in the package)."""
    state = ck.load_checkpoint(out_dir)
    if state is None or state.meta.get("kind") != FORMAT:
        raise InputError(f"{out_dir} holds no tiny-CLIP pretraining checkpoint to export; train first "
                         "(vlfss pretrain-clip --config ...)")
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state.tensors.items()}
    atomic_save_safetensors(tensors, dest, metadata={"model": state.meta["backbone"],
                                                     "seed": str(state.meta["config"]["seed"]),
                                                     "step": str(state.step)})
    return Path(dest)
