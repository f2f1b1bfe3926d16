"""Speed benchmark: our segmenter vs the bare CLIP encoder and CLIPSeg, random weights, CPU, offline.

All variants run in one process, interleaved round-robin over ``repeats`` rounds (a noisy machine then
hurts every variant alike); medians and their ratios are reported against the project's targets:

* (a)    bare visual forward of one query: ``backbone.dense(x, "plain")`` (interpolated pos-embeds);
  (a_oc) open_clip's own ``model.encode_image`` on a copy built for ``size`` (native pos-embeds);
* (b)    ours, training-free, text + one example, support and text cached, a NEW query every call;
* (c)    CLIPSeg (rd64-refined architecture) with the support as visual prompt (re-encoded every call);
* (d)    ours, 5 classes at once, text only, new query every call;
* (e)    CLIPSeg with the same 5 text prompts (the query batched 5 times, as its docs do);
* (f)    (b) under bfloat16 autocast (slow on CPUs without bf16 units; fewer rounds if needed).

Ours and CLIPSeg both start from uint8 images (normalisation is timed); (a) starts from a normalised tensor.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..io_utils import atomic_write_text
from ..modeling.backbones import TINY_MODEL, FrozenBackbone, build_backbone
from ..modeling.config import SegmenterConfig
from ..segmenter import Segmenter

log = logging.getLogger(__name__)

PROMPTS_5 = ["a cat", "a dog", "a car", "a tree", "a person"]
TARGETS: dict[str, tuple[str, float]] = {"b/a": ("<=", 1.15), "c/b": (">=", 1.8), "e/d": (">=", 4.0),
                                         "f/b": ("<=", 0.6)}
RATIOS = [("b/a", "b", "a"), ("b/a_oc", "b", "a_oc"), ("c/b", "c", "b"), ("e/d", "e", "d"), ("f/b", "f", "b")]
LABELS = {
    "a": "bare visual forward: backbone.dense(x, 'plain')",
    "a_oc": "bare visual forward: open_clip model.encode_image",
    "b": "ours: text + 1 example (cached), new query",
    "c": "CLIPSeg: visual prompt (support re-encoded)",
    "d": "ours: 5 classes, text only, new query",
    "e": "CLIPSeg: 5 text prompts (query x5)",
    "f": "ours (b) under bf16 autocast",
}

# CIDAS/clipseg-rd64-refined, written out so nothing is downloaded.
CLIPSEG_RD64_REFINED: dict[str, Any] = {
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "patch_size": 16, "image_size": 224, "hidden_act": "quick_gelu"},
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu"},
    "projection_dim": 512,
    "extract_layers": [3, 6, 9],
    "reduce_dim": 64,
    "decoder_num_attention_heads": 4,
    "decoder_intermediate_size": 2048,
    "decoder_hidden_act": "quick_gelu",
    "conditional_layer": 0,
    "use_complex_transposed_convolution": True,
}


def clipseg_config(overrides: dict[str, Any] | None = None):
    """A ``CLIPSegConfig`` equal to CIDAS/clipseg-rd64-refined, with ``overrides`` merged in (sub-dicts too)."""
    from transformers import CLIPSegConfig  # heavy optional library: only the benchmark needs it

    values: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in CLIPSEG_RD64_REFINED.items()}
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(values.get(k), dict):
            values[k].update(v)
        else:
            values[k] = v
    return CLIPSegConfig(**values)


@dataclass
class _Images:
    """The benchmark scene: one query, one support image and its mask (uint8, deterministic)."""

    query: np.ndarray
    support: np.ndarray
    support_mask: np.ndarray


def _scene(size: int, seed: int) -> _Images:
    rng = np.random.default_rng(seed)

    def image() -> tuple[np.ndarray, np.ndarray]:
        img = (rng.random((size, size, 3)) * 90).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        mask[y:y + size // 3, x:x + size // 3] = 1
        img[mask == 1] = rng.integers(120, 255, 3, dtype=np.uint8)
        return img, mask

    query, _ = image()
    support, support_mask = image()
    return _Images(query, support, support_mask)


class _FreshQueries:
    """Copies of the query with a unique stamp in one pixel, so every call misses the feature cache."""

    def __init__(self, base: np.ndarray) -> None:
        self.base = base
        self.count = 0

    def __call__(self) -> np.ndarray:
        self.count += 1
        img = self.base.copy()
        img[0, 0] = (self.count % 256, (self.count // 256) % 256, 255)
        return img


def _normalise(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W normalised float tensor."""
    x = torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _text_ids(texts: list[str]) -> tuple[Tensor, Tensor]:
    """CLIP BPE ids and attention mask padded to the longest prompt (what CLIPSegProcessor(padding=True) gives)."""
    import open_clip  # heavy optional library: loaded only when the benchmark runs

    ids = open_clip.tokenize(texts)  # N x 77, zero padded
    mask = (ids != 0).long()
    length = int(mask.sum(1).max())
    return ids[:, :length].contiguous(), mask[:, :length].contiguous()


def _open_clip_at_size(backbone, size: int):
    """open_clip model of the backbone's architecture built for ``size``, with the backbone's (resized) weights."""
    import open_clip  # heavy optional library: loaded only when the benchmark runs

    model_id: str = getattr(backbone, "model_id", "")
    if not model_id.startswith("open_clip:") and not model_id.startswith("vlfss-tiny"):
        return None
    arch = TINY_MODEL if model_id.startswith("vlfss-tiny") else model_id.split(":", 1)[1].rsplit("@", 1)[0]
    if arch.startswith(("hf-hub:", "local-dir:")):
        return None
    model = open_clip.create_model(arch, pretrained=None, force_image_size=size)
    grid = (size // backbone.patch_size, size // backbone.patch_size)
    state = dict(backbone.model.visual.state_dict())
    state["positional_embedding"] = backbone.pos_embed_for(grid).clone()
    model.visual.load_state_dict(state)
    return model.eval()


def _cpu_bf16_units() -> bool | None:
    """Whether the CPU advertises bf16 matmul units (AVX512-BF16 / AMX); None where unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _ours(seg, fresh: _FreshQueries, **kwargs: Any) -> Callable[[], Any]:
    """One segment() call on a new query; checks the query, and only it, went through the encoder."""

    def call() -> Any:
        before = seg.image_encodes
        out = seg.segment(fresh(), **kwargs)
        if seg.image_encodes - before != 1:
            raise RuntimeError(f"expected exactly one image encode per call, got {seg.image_encodes - before}")
        return out

    return call


@dataclass
class _Setup:
    """The models of one benchmark run and the timed calls over them."""

    backbone: FrozenBackbone  # the encoder under test
    seg: Segmenter  # ours, fp32
    seg_bf16: Segmenter  # ours under bfloat16 autocast
    clipseg: Any  # transformers' CLIPSegForImageSegmentation (random weights)
    scene: _Images  # the query, support image and support mask
    calls: dict[str, Callable[[], Any]]  # variant key -> one timed call


def run_bench(size: int = 352, repeats: int = 7, model: str = "ViT-B-16", out: str | Path | None = None, *,
              pretrained: str | None = None, threads: int | None = None, bf16_repeats: int | None = None,
              bf16_budget_s: float = 60.0, clipseg_overrides: dict[str, Any] | None = None,
              seed: int = 0, print_table: bool = True) -> dict[str, Any]:
    """Run the benchmark; print a table (medians, ratios, targets), write JSON to ``out``, return the dict.

    ``bf16_repeats`` None: as many rounds of (f) as fit ``bf16_budget_s`` judged by its warm-up call
    (at least 1, at most ``repeats``). ``clipseg_overrides`` changes the CLIPSeg config (tests use a tiny one).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    prev_threads = torch.get_num_threads()
    n_threads = threads or os.cpu_count() or prev_threads
    torch.set_num_threads(n_threads)
    try:
        torch.manual_seed(seed)
        t_build = time.perf_counter()
        setup = _build(size, model, pretrained, clipseg_overrides, seed)
        log.info("models built in %.1f s", time.perf_counter() - t_build)
        with torch.inference_mode():
            warmup = _warm_up(setup)
            if bf16_repeats is None:
                n_f = max(1, min(repeats, int(bf16_budget_s // max(warmup["f"], 1e-6))))
            else:
                n_f = max(0, min(repeats, bf16_repeats))
            text_encodes0 = setup.backbone.text_encodes
            times = _timed_rounds(setup.calls, repeats, n_f)
            text_encodes = setup.backbone.text_encodes - text_encodes0
        config = {"model": model, "pretrained": pretrained, "size": size, "repeats": repeats, "bf16_repeats": n_f,
                  "threads": n_threads, "variant": setup.seg.variant, "seed": seed}
        result = _result(config, setup, times, warmup, text_encodes)
        if print_table:
            print(format_table(result))
        if out is not None:
            atomic_write_text(out, json.dumps(result, indent=2))
        return result
    finally:
        torch.set_num_threads(prev_threads)


def _build(size: int, model: str, pretrained: str | None, clipseg_overrides: dict[str, Any] | None,
           seed: int) -> _Setup:
    """Build ours (fp32 and bf16), open_clip's own model at ``size`` and CLIPSeg; define the timed calls."""
    from transformers import CLIPSegForImageSegmentation  # heavy optional library: only the benchmark needs it

    backbone = build_backbone(model, pretrained or "random")  # a speed benchmark: random weights unless given
    if size % backbone.patch_size:
        raise ValueError(f"size {size} is not a multiple of the patch size {backbone.patch_size}")
    cfg = SegmenterConfig(model=model, pretrained=pretrained, mode="training-free", input_size=size)
    seg = Segmenter(backbone, cfg).eval()
    seg_bf16 = Segmenter(backbone, SegmenterConfig(model=model, pretrained=pretrained, mode="training-free",
                                                   input_size=size, autocast_bf16=True)).eval()
    oc_model = _open_clip_at_size(backbone, size)
    clipseg = CLIPSegForImageSegmentation(clipseg_config(clipseg_overrides)).eval()

    scene = _scene(size, seed)
    fresh = _FreshQueries(scene.query)
    support = [(scene.support, scene.support_mask)]
    x_query = _normalise(scene.query, backbone.mean, backbone.std)
    ids5, mask5 = _text_ids(PROMPTS_5)
    cs_mean, cs_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def clipseg_visual() -> Tensor:
        q = _normalise(scene.query, cs_mean, cs_std)
        s = _normalise(scene.support, cs_mean, cs_std)
        return clipseg(pixel_values=q, conditional_pixel_values=s).logits

    def clipseg_text() -> Tensor:
        q = _normalise(scene.query, cs_mean, cs_std).expand(len(PROMPTS_5), -1, -1, -1).contiguous()
        return clipseg(input_ids=ids5, attention_mask=mask5, pixel_values=q).logits

    calls: dict[str, Callable[[], Any]] = {"a": lambda: backbone.dense(x_query, "plain")}
    if oc_model is not None:
        calls["a_oc"] = lambda: oc_model.encode_image(x_query)
    calls["b"] = _ours(seg, fresh, texts=["a cat"], supports=support)
    calls["c"] = clipseg_visual
    calls["d"] = _ours(seg, fresh, texts=PROMPTS_5)
    calls["e"] = clipseg_text
    calls["f"] = _ours(seg_bf16, fresh, texts=["a cat"], supports=support)
    return _Setup(backbone, seg, seg_bf16, clipseg, scene, calls)


def _warm_up(setup: _Setup) -> dict[str, float]:
    """Prime the caches and call every variant once; returns the warm-up seconds per variant."""
    support = [(setup.scene.support, setup.scene.support_mask)]
    for s in (setup.seg, setup.seg_bf16):  # prime: encode the support (and its text) once, so each call encodes 1
        s.segment(setup.scene.support, texts=["a cat"], supports=support)
    warmup: dict[str, float] = {}
    for name, fn in setup.calls.items():  # warm-up: also caches the support features and text embeddings
        t0 = time.perf_counter()
        fn()
        warmup[name] = time.perf_counter() - t0
        log.info("warm-up %s: %.3f s", name, warmup[name])
    return warmup


def _timed_rounds(calls: dict[str, Callable[[], Any]], repeats: int, n_f: int) -> dict[str, list[float]]:
    """``repeats`` round-robin rounds (rotated so no variant always runs first); (f) only in its first n_f."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no variant always runs first
        for name in order:
            if name == "f" and r >= n_f:
                continue
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
        log.info("round %d/%d done", r + 1, repeats)
    return times


def _ratios(medians: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """The ratios of medians, each with its target and whether it is met."""
    ratios: dict[str, dict[str, Any]] = {}
    for key, num, den in RATIOS:
        a, b = medians.get(num), medians.get(den)
        if a is None or b is None:
            continue
        value = a / b
        entry: dict[str, Any] = {"value": round(value, 4)}
        if key in TARGETS:
            op, target = TARGETS[key]
            entry.update(target=f"{op} {target}", met=bool(value <= target if op == "<=" else value >= target))
        ratios[key] = entry
    return ratios


def _result(config: dict[str, Any], setup: _Setup, times: dict[str, list[float]], warmup: dict[str, float],
            text_encodes: int) -> dict[str, Any]:
    """The JSON-ready figures: config (with versions and CPU), per-variant times, ratios, checks."""
    import transformers  # heavy optional library: only the benchmark needs it (loaded by _build already)

    medians = {k: _median(v) for k, v in times.items()}
    config = {**config, "torch": torch.__version__, "transformers": transformers.__version__,
              "cpu": platform.processor() or platform.machine(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_units": _cpu_bf16_units(),
              "clipseg_attn_implementation": getattr(setup.clipseg.config, "_attn_implementation", None)}
    return {
        "config": config,
        "variants": {k: {"label": LABELS[k], "median_s": medians[k], "warmup_s": warmup[k], "times_s": times[k]}
                     for k in setup.calls},
        "ratios": _ratios(medians),
        "checks": {"text_encodes_during_timing": text_encodes, "query_encodes_per_call": 1},
    }


def format_table(result: dict[str, Any]) -> str:
    """The human-readable table of medians and ratios."""
    c = result["config"]
    lines = [f"vlfss bench: {c['model']} (weights {c['pretrained'] or 'random'}) at {c['size']} px, "
             f"{c['threads']} threads, {c['repeats']} rounds ({c['bf16_repeats']} for f), torch {c['torch']}, "
             f"cpu {c['cpu_capability']}, bf16 units {c['cpu_bf16_units']}", ""]
    lines.append(f"{'':5s} {'variant':52s} {'median ms':>10s} {'n':>3s}")
    for k, v in result["variants"].items():
        med = f"{1000 * v['median_s']:.1f}" if v["median_s"] is not None else "-"
        lines.append(f"{k:5s} {v['label']:52s} {med:>10s} {len(v['times_s']):>3d}")
    lines.append("")
    lines.append(f"{'ratio':8s} {'measured':>9s} {'target':>8s}  met")
    for k, r in result["ratios"].items():
        lines.append(f"{k:8s} {r['value']:9.3f} {r.get('target', '-'):>8s}  {r.get('met', '-')}")
    if c["cpu_bf16_units"] is False:
        lines.append("note: this CPU has no bf16 matmul units (no AVX512-BF16/AMX): bf16 autocast is emulated, slow")
    return "\n".join(lines)
