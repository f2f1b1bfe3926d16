"""Cost of slide inference against one forward at the encoder's native size (issue 14's cost target).

For each model: the median time of one native-size forward (batch of one, through ``Segmenter.encode``) and of
encoding one large image with ``inference=slide`` (all windows in one batch, features stitched), both on fresh
images so the feature cache never answers. Reported: windows per image and
``slide time / (windows x one native forward)`` (target <= 1.1: batching the windows costs no more than running
them one by one). Arms alternate within each round, so load on the machine hits both alike.

    python eval/slide_cost.py                       # tiny (288 px) and ViT-B-16 (random weights, 1024 x 768)
    python eval/slide_cost.py --models tiny --rounds 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlfss.io_utils import atomic_write_text  # noqa: E402
from vlfss.segmenter import build_segmenter  # noqa: E402

CASES = {  # name -> (model, extra segmenter fields, large image (h, w))
    "tiny": ("vlfss-tiny", {}, (288, 288)),
    # native windows over the whole photo (slide_short_side=0), not the model's SCLIP-style resize to 336 px first
    "vitb": ("ViT-B-16", {"pretrained": "random", "slide_short_side": 0}, (768, 1024)),
}


def _images(shape: tuple[int, int], seed: int):
    rng = np.random.default_rng(seed)
    while True:  # a new image every call: the feature cache never hits
        yield rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


def measure(case: str, rounds: int) -> dict:
    model, extra, big = CASES[case]
    seg = build_segmenter(model, mode="training-free", inference="slide", **extra)
    native = seg.backbone.image_size
    small_imgs, big_imgs = _images((native, native), 0), _images(big, 1)
    window, stride = seg.window_geometry()
    windows = len(seg._plan(*big, None)[2] or [])
    with torch.inference_mode():
        seg.encode([next(small_imgs)]), seg.encode([next(big_imgs)])  # warm-up
        one, slid = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            seg.encode([next(small_imgs)])
            one.append(time.perf_counter() - t)
            t = time.perf_counter()
            seg.encode([next(big_imgs)])
            slid.append(time.perf_counter() - t)
    t1, ts = statistics.median(one), statistics.median(slid)
    return {"case": case, "model": model, "image": f"{big[1]}x{big[0]}", "window": window, "stride": stride,
            "windows": windows, "native_forward_ms": round(1000 * t1, 2), "slide_ms": round(1000 * ts, 1),
            "ratio_to_windows_x_forward": round(ts / (windows * t1), 3), "rounds": rounds,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    rows = [measure(c, args.rounds if c == "tiny" else max(3, args.rounds // 2)) for c in args.models]
    print(f"{'model':10s} {'image':>9s} {'window/stride':>13s} {'windows':>7s} {'1 fwd ms':>9s} {'slide ms':>9s} "
          f"{'ratio':>6s}")
    for r in rows:
        print(f"{r['model']:10s} {r['image']:>9s} {r['window']:>6d}/{r['stride']:<6d} {r['windows']:>7d} "
              f"{r['native_forward_ms']:>9.2f} {r['slide_ms']:>9.1f} {r['ratio_to_windows_x_forward']:>6.3f}")
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
