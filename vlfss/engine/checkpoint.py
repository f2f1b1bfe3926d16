"""Resumable checkpoints of meta-training and tiny-CLIP pretraining: safetensors weights + JSON metadata, and a
side file with optimiser and RNG state.

Layout in ``out_dir``::

    ckpt-00000400.safetensors   trainable weights; header "vlfss" = JSON {format, step, backbone, config, ...}
    ckpt-00000400.state.pt      {"step", "optimizer", "torch_rng", "cuda_rng"}: tensors and plain containers only,
                                read with ``torch.load(weights_only=True)`` (never unsafe pickle)
    last.json                   {"step", "weights", "state"}: the pointer, written last

Every file goes to a temporary name and is renamed, and the pointer moves only after both files of a step
exist, so a run killed at any moment resumes from a complete checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ..errors import ConfigError, InputError
from ..io_utils import atomic_save_safetensors, atomic_write_bytes, atomic_write_text, check_writable_dir

log = logging.getLogger(__name__)

CKPT_FORMAT = "vlfss-train-checkpoint/1"
POINTER = "last.json"

# Meta-training config keys that may change between a run and its resumption: they do not change the weights.
RESUME_FREE_KEYS = frozenset({
    "out_dir", "progress", "tensorboard", "checkpoint_every", "keep_checkpoints", "threads", "export_path",
    "log_every", "save_rank_weights", "segmenter.device", "segmenter.feature_cache_items",
    "segmenter.feature_cache_dir", "segmenter.cache_dir",
})


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    step: int  # optimiser steps done
    tensors: dict[str, Tensor]  # trainable weights by name
    meta: dict[str, Any]  # the JSON header (format, backbone, variant, step, config, ...)
    state: dict[str, Any]  # optimiser and RNG state
    path: Path  # the weights file


# ------------------------------------------------------------------------------------------ config diff
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def config_diff(old: dict[str, Any], new: dict[str, Any], ignore: frozenset[str] = RESUME_FREE_KEYS) -> list[str]:
    """Differences ``key: old -> new`` between two nested config mappings, skipping ``ignore`` keys."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ignore or any(k.startswith(i + ".") for i in ignore):
            continue
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb and not (isinstance(va, float) and isinstance(vb, float) and math.isclose(va, vb)):
            out.append(f"{k}: {va!r} -> {vb!r}")
    return out


# ------------------------------------------------------------------------------------------ output dir
def estimate_checkpoint_bytes(num_params: int, keep: int) -> int:
    """Rough disk need of a run: ``keep``+1 checkpoints (weights + two Adam moments) plus the final files."""
    per = num_params * 4 * 3 + (1 << 16)
    return per * (keep + 1) + num_params * 4 * 2 + (1 << 20)


def check_output_dir(path: str | Path, need_bytes: int = 0) -> Path:
    """Create ``path``, prove it is writable and has ``need_bytes`` free for checkpoints; InputError otherwise."""
    return check_writable_dir(path, "output folder", "set out_dir=... to a writable folder", need_bytes)


# ------------------------------------------------------------------------------------------ save / load
def _name(step: int) -> str:
    return f"ckpt-{step:08d}"


def save_checkpoint(out_dir: str | Path, step: int, tensors: dict[str, Tensor], meta: dict[str, Any],
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write the weights, the state side file and then the pointer, atomically; prune all but ``keep``."""
    out = Path(out_dir)
    name = _name(step)
    weights, side = out / f"{name}.safetensors", out / f"{name}.state.pt"
    header = {"format": CKPT_FORMAT, "step": int(step), **meta}
    atomic_save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, weights,
                            metadata={"vlfss": json.dumps(header)})
    buf = io.BytesIO()
    torch.save({"step": int(step), **state}, buf)
    atomic_write_bytes(side, buf.getvalue())
    atomic_write_text(out / POINTER, json.dumps({"step": int(step), "weights": weights.name, "state": side.name}))
    steps = sorted(int(p.name[5:13]) for p in out.glob("ckpt-*.safetensors") if p.name[5:13].isdigit())
    for old in steps[:-max(1, keep)]:
        for suffix in (".safetensors", ".state.pt"):
            (out / f"{_name(old)}{suffix}").unlink(missing_ok=True)
    return weights


def save_if_due(out_dir: str | Path, step: int, steps: int, every: int, tensors: dict[str, Tensor],
                meta: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """After ``step`` of ``steps`` optimiser steps: a checkpoint (optimiser and RNG state included) every ``every``
    steps and at the last one."""
    if step % every == 0 or step == steps:
        save_checkpoint(out_dir, step, tensors, meta, {"optimizer": optimizer.state_dict(), **rng_state()})


def has_checkpoint(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a checkpoint pointer (a run to resume or to overwrite)."""
    return (Path(out_dir) / POINTER).is_file()


def clear_checkpoints(out_dir: str | Path) -> None:
    """Delete the pointer and every checkpoint of ``out_dir`` (a run that starts over must not leave later steps
    behind: pruning keeps the highest steps, which would then be the old run's)."""
    out = Path(out_dir)
    (out / POINTER).unlink(missing_ok=True)
    for p in list(out.glob("ckpt-*.safetensors")) + list(out.glob("ckpt-*.state.pt")):
        p.unlink(missing_ok=True)


def load_checkpoint(out_dir: str | Path) -> Checkpoint | None:
    """The checkpoint ``last.json`` points to, or None when there is none; clear errors when it is damaged."""
    out = Path(out_dir)
    pointer = out / POINTER
    if not pointer.is_file():
        return None
    try:
        ptr = json.loads(pointer.read_text("utf-8"))
        weights, side = out / ptr["weights"], out / ptr["state"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"checkpoint pointer {pointer} is unreadable ({e}); delete it to start over") from None
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vlfss", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = torch.load(side, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any damage means the same thing to the user
        raise InputError(f"checkpoint {weights.name} in {out} is unreadable ({type(e).__name__}: {e}); delete "
                         f"{pointer.name} to start over") from None
    if meta.get("format") != CKPT_FORMAT:
        raise InputError(f"{weights} is not a vlfss training checkpoint")
    if int(meta.get("step", -1)) != int(state.get("step", -2)):
        raise InputError(f"checkpoint {weights.name} and its state file disagree on the step; delete {pointer.name}")
    return Checkpoint(int(meta["step"]), tensors, meta, state, weights)


def check_compatible(ckpt: Checkpoint, backbone_id: str, config: dict[str, Any],
                     ignore: frozenset[str] = RESUME_FREE_KEYS) -> None:
    """Refuse to resume from a checkpoint of another model or config (``ignore``: keys that may change), showing
    every difference."""
    diffs = []
    if ckpt.meta.get("backbone") != backbone_id:
        diffs.append(f"backbone: {ckpt.meta.get('backbone')!r} -> {backbone_id!r}")
    diffs += config_diff(ckpt.meta.get("config", {}), config, ignore)
    if diffs:
        raise ConfigError(f"cannot resume from {ckpt.path} (step {ckpt.step}): it was written with a different "
                          f"model/config: {'; '.join(diffs)}; use the same config or another out_dir")


def rng_state() -> dict[str, Any]:
    """Torch CPU (and CUDA) generator states, as tensors."""
    st: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda_rng"] = torch.cuda.get_rng_state_all()
    return st


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the generator states ``rng_state`` saved."""
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
