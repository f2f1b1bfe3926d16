"""The encoder's arithmetic for the hardware: bfloat16 autocast where it is faster, float32 elsewhere.

bf16 pays only on hardware with bf16 units: on CUDA (``torch.cuda.is_bf16_supported()``) and on CPUs that
advertise AMX (``amx_bf16``) or AVX-512-BF16 (``avx512_bf16``) in ``/proc/cpuinfo``. Advertised units are not
enough: on a virtual machine that advertises ``avx512_bf16`` but no AMX, bf16 autocast ran the tiny encoder at
0.69x and ViT-B-16 at 0.24x of fp32 speed (docs/label.md; measured before the open_clip blocks stopped sending
bf16 through a materialised copy of each attention weight, see ``backbones/open_clip_backbone.py``). So on a CPU
with the flags, ``auto`` times the run's own encoder once both ways and keeps bf16 only when it is at least
``MIN_SPEEDUP`` times faster; without the flags it picks fp32 without measuring (issue 15 measured bf16 5.7x
slower on such a CPU). Only the encoder runs
in bf16, as ``SegmenterConfig.autocast_bf16`` does; the head and the scoring stay in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 dot-product units
MIN_SPEEDUP = 1.2  # bf16 must beat fp32 by this factor on the run's encoder to be chosen on a CPU


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``resolve_precision`` chose and why (the reason goes into the run's summary)."""

    name: str  # "fp32" or "bf16"
    reason: str  # one line: the hardware facts and, on a CPU with bf16 flags, the measured speed-up


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def measure_speedup(run: Callable[[bool], None], repeats: int = 2) -> float:
    """fp32 time / bf16 time of ``run(bf16)``, each the best of ``repeats`` after one warm-up call."""
    best = {}
    for bf16 in (False, True):
        run(bf16)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(bf16)
            times.append(time.perf_counter() - t)
        best[bf16] = min(times)
    return best[False] / max(best[True], 1e-9)


def resolve_precision(requested: str, device: torch.device | str, flags: set[str] | None = None,
                      measure: Callable[[], float] | None = None) -> PrecisionChoice:
    """``auto`` | ``fp32`` | ``bf16`` -> the precision to run. ``flags``: CPU flags (default: read them);
    ``measure``: returns the bf16 speed-up of the run's encoder (called only on a CPU with bf16 flags)."""
    device = torch.device(device)
    if requested == "fp32":
        return PrecisionChoice("fp32", "fp32 as requested")
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if requested == "bf16" and not ok:
            raise InputError(f"--precision bf16: {device} has no bf16 support; use --precision fp32 or auto")
        return PrecisionChoice("bf16" if ok else "fp32", f"{requested}: CUDA bf16 support {'yes' if ok else 'no'}")
    if requested == "bf16":
        return PrecisionChoice("bf16", "bf16 as requested")
    if requested != "auto":
        raise InputError(f"precision must be auto, fp32 or bf16, got {requested!r}")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"auto: no bf16 rule for {device.type}; fp32")
    flags = cpu_flags() if flags is None else flags
    units = [f for f in BF16_FLAGS if f in flags]
    if not units:
        return PrecisionChoice("fp32", "auto: the CPU has no bf16 units (no amx_bf16 / avx512_bf16 flag); fp32")
    if measure is None:
        return PrecisionChoice("bf16", f"auto: the CPU has {', '.join(units)}; bf16")
    speedup = measure()
    name = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    return PrecisionChoice(name, f"auto: the CPU has {', '.join(units)}; bf16 ran the encoder at {speedup:.2f}x "
                                 f"fp32 speed (needs {MIN_SPEEDUP}x); {name}")


@contextlib.contextmanager
def encoder_precision(seg, precision: str) -> Iterator[None]:
    """Run ``seg.encode`` in ``precision`` inside the block (CPU: ``cfg.autocast_bf16``; CUDA: autocast);
    the segmenter's own config is restored afterwards."""
    bf16 = precision == "bf16"
    old = seg.cfg
    dev = seg.backbone.device
    seg.cfg = dataclasses.replace(old, autocast_bf16=bf16 and dev.type == "cpu")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and dev.type == "cuda" else contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        seg.cfg = old
