"""Benchmarks of `vlfss label` (issue 15): throughput against the bare batched encoder, bf16 against fp32, peak
memory against the number of images. Every ratio is measured in one run on this machine (timings here are
noisy: only ratios of neighbouring measurements mean something).

    PYTHONPATH=. python eval/label_bench.py                          # all sections (about 15 min on 2 busy cores)
    PYTHONPATH=. python eval/label_bench.py --sections tiny precision --tiny-images 200   # a quicker look

Sections:
  tiny       the embedded tiny model on --tiny-images 96-px synthetic scenes, batch 32: the bare encoder, `label`
             in learned (its default) and training-free mode, and `Segmenter.segment` one image per call
  vitb       ViT-B-16 (random weights) at 352 px, batch 8, --vitb-images images, training-free: encoder vs `label`
  precision  what `--precision auto` picks here and why; `label` images/s in fp32 and bf16, interleaved (tiny:
             200 scenes, learned; ViT-B: 16 images, training-free); agreement of bf16 labels with fp32 labels on
             the synthetic test split (tiny: --agree-images images, learned; ViT-B: --agree-vitb-images)
  rss        peak RSS (VmHWM) of a fresh process labelling --rss-sizes images (training-free, batch 32)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SUPPORT_CLASS = "stripes"  # the class labelled in the throughput runs (text + 5 examples)


def cpu_facts() -> dict:
    from vlfss.labeling.precision import BF16_FLAGS, cpu_flags

    flags = cpu_flags()
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_flags": [f for f in (*BF16_FLAGS, "amx_tile", "avx512_fp16") if f in flags],
            "load_average": os.getloadavg()}


def write_scenes(folder: Path, n: int, size: int = 96, offset: int = 2_000_000_000) -> list[Path]:
    """``n`` synthetic test-split scenes as PNGs (rendered at 96 px, resized to ``size``)."""
    from vlfss.data.synthetic import SyntheticConfig, generate_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"q{i:05d}.png"
        if not p.exists():
            img = Image.fromarray(generate_scene(0, offset + i, SyntheticConfig(image_size=96)).image)
            (img if size == 96 else img.resize((size, size), Image.BILINEAR)).save(p, compress_level=1)
        paths.append(p)
    return paths


def supports(folder: Path, k: int = 5, size: int = 96) -> list[tuple[str, str]]:
    """``k`` (image, mask) pairs of SUPPORT_CLASS from the val split."""
    from vlfss.data.synthetic import CLASS_NAMES, SyntheticConfig, generate_scene

    c = CLASS_NAMES.index(SUPPORT_CLASS)
    folder.mkdir(parents=True, exist_ok=True)
    pairs, i = [], 0
    while len(pairs) < k:
        sc = generate_scene(0, 1_000_000_000 + i, SyntheticConfig(image_size=96))
        i += 1
        if c not in sc.class_ids:
            continue
        img, m = Image.fromarray(sc.image), Image.fromarray(((sc.mask == c + 1) * 255).astype(np.uint8))
        if size != 96:
            img, m = img.resize((size, size), Image.BILINEAR), m.resize((size, size), Image.NEAREST)
        ip, mp = folder / f"s{len(pairs)}.png", folder / f"s{len(pairs)}_mask.png"
        img.save(ip)
        m.save(mp)
        pairs.append((str(ip), str(mp)))
    return pairs


def encoder_rate(seg, paths: list[Path], batch: int, bf16: bool = False) -> float:
    """Images/s of the bare batched encoder on decoded, resized, normalised inputs held in memory."""
    from vlfss.data.image import load_image

    imgs = [load_image(p) for p in paths]
    xs = [seg._to_input(im, seg.encoder_size(*im.shape[:2])) for im in imgs]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        seg.backbone.dense(torch.stack(xs[:batch]), seg.variant)  # warm-up
        t = time.perf_counter()
        for i in range(0, len(xs), batch):
            seg.backbone.dense(torch.stack(xs[i:i + batch]), seg.variant)
    return len(xs) / (time.perf_counter() - t)


def label_rate(seg, folder: Path, out: Path, batch: int, sup, **kw) -> tuple[float, float]:
    """(images/s of the labelling loop, images/s wall time including the published files)."""
    from vlfss.labeling import label

    t = time.perf_counter()
    s = label(folder, out, texts=[SUPPORT_CLASS], supports=[sup], segmenter=seg, batch_size=batch, progress=False,
              overwrite=True, **{"precision": "fp32", **kw})
    assert s.complete and s.failed == 0, s
    return s.images_per_s, s.done / (time.perf_counter() - t)


def segment_rate(seg, paths: list[Path], sup) -> float:
    """Images/s of ``Segmenter.segment`` called once per image (what `vlfss segment` does), labels only."""
    t = time.perf_counter()
    for p in paths:
        seg.segment(str(p), texts=[SUPPORT_CLASS], supports=[sup])
    return len(paths) / (time.perf_counter() - t)


def tiny_section(work: Path, args) -> dict:
    from vlfss.segmenter import build_segmenter

    paths = write_scenes(work / "tiny", args.tiny_images)
    sup = supports(work / "sup96")
    seg = build_segmenter(feature_cache_items=0)
    r: dict = {"images": len(paths), "batch": 32, "mode_default": seg.mode}
    enc1 = encoder_rate(seg, paths, 32)
    r["label_learned"], r["label_learned_wall"] = label_rate(seg, work / "tiny", work / "out-l", 32, sup)
    r["label_training_free"], _ = label_rate(seg, work / "tiny", work / "out-t", 32, sup, mode="training-free")
    enc2 = encoder_rate(seg, paths, 32)
    r["segment_per_image"] = segment_rate(seg, paths[:200], sup)
    r["encoder"] = (enc1 + enc2) / 2
    r["encoder_runs"] = [enc1, enc2]
    for k in ("label_learned", "label_training_free", "segment_per_image"):
        r[f"{k}_ratio"] = r[k] / r["encoder"]
    return r


def _vitb(**kw):
    from vlfss.errors import ModelError
    from vlfss.segmenter import build_segmenter

    try:  # after the restructuring a random CLIP must be asked for by name
        return build_segmenter("ViT-B-16", pretrained="random", **kw)
    except ModelError:
        return build_segmenter("ViT-B-16", pretrained=None, **kw)


def vitb_section(work: Path, args) -> dict:
    paths = write_scenes(work / "vitb", args.vitb_images, size=352)
    sup = supports(work / "sup352", k=1, size=352)
    seg = _vitb(input_size=352, mode="training-free", feature_cache_items=0)
    enc1 = encoder_rate(seg, paths, 8)
    lab, wall = label_rate(seg, work / "vitb", work / "out-v", 8, sup)
    enc2 = encoder_rate(seg, paths, 8)
    enc = (enc1 + enc2) / 2
    return {"images": len(paths), "batch": 8, "size": 352, "encoder": enc, "encoder_runs": [enc1, enc2],
            "label": lab, "label_wall": wall, "label_ratio": lab / enc}


def agreement(seg, n: int) -> dict:
    """Pixels labelled the same by bf16 and fp32: fold 0's five classes, text + 1 support each, test split."""
    from vlfss.data.synthetic import CLASS_NAMES, fold_classes
    from vlfss.data.synthetic_store import synthetic_dataset
    from vlfss.labeling.precision import encoder_precision
    from vlfss.modeling import functional as fn

    test, val = synthetic_dataset("test"), synthetic_dataset("val")
    classes = fold_classes(0)
    sup = []
    for c in classes:
        i = val.images_of_class(c)[0]
        sup.append([(val.load_image(i), (val.load_label(i) == c + 1).astype(np.uint8))])
    request = seg.prepare([CLASS_NAMES[c] for c in classes], sup)
    same = total = 0
    per_image = []
    for start in range(0, n, 32):
        imgs = [test.load_image(i) for i in range(start, min(n, start + 32))]
        labels = {}
        for prec in ("fp32", "bf16"):
            with torch.no_grad(), encoder_precision(seg, prec):
                enc = seg.encode(imgs, request.variant)
            labels[prec] = [fn.nway_logits(seg.logits(e, request)[None])[0].argmax(0) for e in enc]
        for a, b in zip(labels["fp32"], labels["bf16"]):
            eq = int((a == b).sum())
            same, total = same + eq, total + a.numel()
            per_image.append(eq / a.numel())
    return {"images": n, "pixels_equal": same / total, "worst_image": min(per_image), "mode": request.mode}


def precision_section(work: Path, args) -> dict:
    """What auto picks, `label` in fp32 and bf16 (interleaved: fp32, bf16, fp32, bf16), and label agreement, for
    the tiny model (learned, 96 px, batch 32) and ViT-B-16 (random weights, training-free, 352 px, batch 8)."""
    from vlfss.labeling.precision import resolve_precision
    from vlfss.labeling.run import _encoder_speedup
    from vlfss.segmenter import build_segmenter

    r: dict = {}
    paths = write_scenes(work / "tiny", args.tiny_images)
    n = min(200, len(paths))
    sub = work / "tiny200"
    sub.mkdir(exist_ok=True)
    for p in paths[:n]:
        if not (sub / p.name).exists():
            os.link(p, sub / p.name)
    arms = [("tiny", lambda: build_segmenter(feature_cache_items=0), sub, paths[:n], supports(work / "sup96"), 32)]
    if args.vitb_images:
        vpaths = write_scenes(work / "vitb", args.vitb_images, size=352)
        vsub = work / "vitb16"
        vsub.mkdir(exist_ok=True)
        for p in vpaths[:16]:
            if not (vsub / p.name).exists():
                os.link(p, vsub / p.name)
        arms.append(("vitb", lambda: _vitb(input_size=352, mode="training-free", feature_cache_items=0), vsub,
                     vpaths[:16], supports(work / "sup352", k=1, size=352), 8))
    for name, build, folder, arm_paths, sup, batch in arms:
        seg = build()
        auto = resolve_precision("auto", "cpu", measure=lambda: _encoder_speedup(seg, seg.variant, batch))  # noqa: B023
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(2):
            for prec in ("fp32", "bf16"):
                rates[prec].append(label_rate(seg, folder, work / f"out-p-{name}-{prec}", batch, sup,
                                              precision=prec)[0])
        fp32, bf16 = sum(rates["fp32"]) / 2, sum(rates["bf16"]) / 2
        r[name] = {"images": len(arm_paths), "batch": batch, "auto": auto.name, "auto_reason": auto.reason,
                   "label_fp32": fp32, "label_bf16": bf16, "label_runs": rates, "bf16_over_fp32": bf16 / fp32,
                   "encoder_fp32": encoder_rate(seg, arm_paths, batch),
                   "encoder_bf16": encoder_rate(seg, arm_paths, batch, bf16=True)}
        r[name]["encoder_bf16_over_fp32"] = r[name]["encoder_bf16"] / r[name]["encoder_fp32"]
        print(name, json.dumps(r[name], default=float), flush=True)
    r["agreement_tiny"] = agreement(build_segmenter(feature_cache_items=0), args.agree_images)
    if args.vitb_images:
        r["agreement_vitb"] = agreement(_vitb(input_size=352, mode="training-free", feature_cache_items=0),
                                        args.agree_vitb_images)
    return r


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child started by a big parent
# would report the parent's peak. The decoding workers are forked copies sharing the parent's pages; not counted.
RSS_CHILD = """
import re, sys, time
from vlfss.labeling import label
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
from vlfss.segmenter import build_segmenter
seg = build_segmenter(feature_cache_items=0)
built = hwm()
t = time.perf_counter()
s = label(sys.argv[1], sys.argv[2], texts=["stripes"], segmenter=seg, batch_size=32, progress=False,
          precision="fp32", mode="training-free", overwrite=True)
print(s.done, s.failed, round(time.perf_counter() - t, 1), built, hwm())
"""


def rss_section(work: Path, args) -> dict:
    base = write_scenes(work / "tiny", min(1000, max(args.rss_sizes)))
    out = {}
    for n in args.rss_sizes:
        folder = work / f"rss{n}"
        folder.mkdir(exist_ok=True)
        for i in range(n):  # hard links: n distinct paths, no n distinct renders needed
            p = folder / f"{i // 1000:02d}" / f"q{i:05d}.png"
            if not p.exists():
                p.parent.mkdir(exist_ok=True)
                os.link(base[i % len(base)], p)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(folder), str(work / f"out-rss{n}")], env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        done, failed, secs, built_kb, peak_kb = proc.stdout.split()[-5:]
        out[n] = {"done": int(done), "failed": int(failed), "seconds": float(secs),
                  "rss_after_model_build_mib": int(built_kb) / 1024, "peak_rss_mib": int(peak_kb) / 1024}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="vlfss label benchmarks (ratios measured in one run)")
    ap.add_argument("--sections", nargs="*", default=["tiny", "vitb", "precision", "rss"])
    ap.add_argument("--tiny-images", type=int, default=1000)
    ap.add_argument("--vitb-images", type=int, default=64)
    ap.add_argument("--agree-images", type=int, default=500)
    ap.add_argument("--agree-vitb-images", type=int, default=32, help="test-split images for ViT-B's agreement")
    ap.add_argument("--rss-sizes", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--work-dir", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared machine OpenMP teams of "
                    "several threads spin against other jobs and every figure is noise)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("root").setLevel(logging.ERROR)
    result = {"facts": cpu_facts(), "command": " ".join(["python eval/label_bench.py", *(argv or sys.argv[1:])])}
    print(json.dumps(result["facts"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="label-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        for name in args.sections:
            t = time.perf_counter()
            result[name] = {"tiny": tiny_section, "vitb": vitb_section, "precision": precision_section,
                            "rss": rss_section}[name](work, args)
            result[name]["section_seconds"] = round(time.perf_counter() - t, 1)
            print(name, json.dumps(result[name], default=float), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
