"""Validation during meta-training: novel-class scores per input kind, the best head so far, and which kinds
the exported head should answer (``fallback_to_training_free``).

Validation scores each query at its original label size (the strict convention), with the label rule
``Segmenter.segment`` applies; under torch.distributed each rank scores a shard and the counts are all-reduced.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from ..data.episodes import EpisodeSampler, shard
from ..errors import InputError
from ..evaluation.metrics import FSSMeter
from ..io_utils import atomic_save_safetensors
from ..modeling import functional as fn
from ..modeling.head import SegHead
from ..modeling.types import ClassSpec, Encoded
from ..segmenter import Segmenter
from .config import KINDS
from .distributed import DistContext
from .objective import specs_with_text
from .views import prepare_episode

Scores = dict[str, dict[str, float]]  # {"text": {"miou": .., "fb_iou": ..}, "shots@5": {...}, ...}
BEST_FILE = "best.safetensors"  # the best validated weights of a keep_best run (read back on resume)
STEP0_FILE = "val_step0.json"  # the untrained head's (= training-free model's) validation, for the fallback


def predict_labels(head: SegHead, query: Encoded, specs: list[ClassSpec]) -> Tensor:
    """H x W labels (0 background, j+1 class j) at the query's original size, as Segmenter.segment computes them."""
    fg = head([query], specs)
    logits = F.interpolate(fn.nway_logits(fg), size=query.size, mode="bilinear", align_corners=False)
    return logits[0].argmax(0)


def _runs(modes: Sequence[str], shots: Sequence[int]) -> list[tuple[str, int, str]]:
    """(mode, K, key) to score: text once, the example modes at every K (keys ``mode@K`` after the first K)."""
    return [(m, 0 if m == "text" else k, m if m == "text" or j == 0 else f"{m}@{k}")
            for j, k in enumerate(shots) for m in modes if m != "text" or j == 0]


@torch.no_grad()
def validate(segmenter: Segmenter, sampler: EpisodeSampler, episodes: Sequence[int] | None = None,
             modes: Sequence[str] = KINDS, head: SegHead | None = None, prompt: nn.Module | None = None,
             ctx: DistContext | None = None, variant: str | None = None,
             shots: Sequence[int] | None = None) -> Scores:
    """mIoU and FB-IoU (FSSMeter) of ``head`` (default ``segmenter.head``) per mode on ``episodes`` of ``sampler``.

    Modes: ``text`` (zero-shot), ``shots`` (K examples), ``text+shots``. ``shots`` lists the K to score the
    example modes at (default: the sampler's k_shot); the first K's keys are the plain mode names, the others'
    ``"<mode>@<K>"``. Under torch.distributed (``ctx``) each rank scores ``shard(n, rank, world)`` and the counts
    are all-reduced.
    """
    head = head if head is not None else segmenter.head
    if head is None:
        raise InputError("validate needs a learned head")
    variant = variant or segmenter.head_variant
    device = next(head.parameters()).device
    idx = list(range(len(sampler)) if episodes is None else episodes)
    if ctx is not None and ctx.distributed:
        idx = [idx[i] for i in shard(len(idx), ctx.rank, ctx.world)]
    runs = _runs(modes, list(shots or [sampler.k_shot]))
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


def fallback_kinds(trained: Scores, free: Scores | None) -> list[str]:
    """Input kinds the trained head should answer: those it beat the training-free model on (validation mIoU) at
    every validated shot count (keys ``kind`` and ``kind@K``); a key without both scores is no evidence either way."""
    free = free or {}
    lost = {key.split("@")[0] for key in trained
            if key in free and trained[key]["miou"] <= free[key]["miou"]}
    return [k for k in KINDS if k not in lost]


def format_scores(val: Scores) -> str:
    """``text mIoU 41.2, shots mIoU 50.3, ...`` for logs and the CLI."""
    return ", ".join(f"{m} mIoU {100 * d['miou']:.1f}" for m, d in val.items())


def read_json(path: Path) -> Any:
    """A JSON file the run wrote earlier (None if absent); a damaged one is an error naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is damaged ({e}); delete it, or start the run again with --overwrite") from e


# ------------------------------------------------------------------------------------------ keep_best
@dataclass
class Best:
    """The best validated weights so far (every rank holds the same copy)."""

    score: float  # mean validation mIoU over the validated inputs
    step: int  # the step they were validated at
    val: Scores  # their validation scores
    state: dict[str, Tensor]  # the trainable module's state dict


def mean_score(val: Scores, free: Scores | None = None) -> float:
    """Mean mIoU over the validated keys; with ``free`` (the training-free scores, for fallback_to_training_free)
    a key scores the better of the head's and the training-free model's mIoU, as the exported head will answer it."""
    def key_score(k: str, v: dict[str, float]) -> float:
        return max(v["miou"], free[k]["miou"]) if free and k in free else v["miou"]

    return float(np.mean([key_score(k, v) for k, v in val.items()])) if val else float("nan")


def update_best(best: Best | None, module: nn.Module, out: Path, step: int, val: Scores, write: bool,
                free: Scores | None = None) -> Best | None:
    """Keep a copy of ``module``'s weights when ``val`` beats the best so far (a tie keeps the earlier step); the
    main rank (``write``) also writes best.safetensors atomically, so a resumed run knows the best it has to beat."""
    score = mean_score(val, free)
    if not np.isfinite(score) or (best is not None and score <= best.score):
        return best
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if write:
        atomic_save_safetensors({k: v.cpu() for k, v in state.items()}, out / BEST_FILE,
                                metadata={"vlfss": json.dumps({"step": step, "score": score, "val": val})})
    return Best(score, step, val, state)


def load_best(out: Path, module: nn.Module, device: torch.device) -> Best | None:
    """The best weights a resumed run had kept (None if it had validated nothing yet)."""
    path = out / BEST_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("vlfss", "{}"))
        state = {k: f.get_tensor(k).to(device) for k in f.keys()}
    if set(state) != set(module.state_dict()):
        raise InputError(f"{path} does not hold this run's weights; delete it or pass --overwrite")
    return Best(float(meta["score"]), int(meta["step"]), meta["val"], state)
