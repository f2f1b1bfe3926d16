"""Cost of the embedded model's robust fallback per image: a sharp scene, and a flagged (blurred) one under each
``robust_symmetry``.

Each arm times ``Segmenter.encode`` of one 96-px synthetic scene (the feature cache off, so every call encodes),
the median of ``--repeats`` calls after ``--warmup``; arms alternate within each round, so load on the machine hits
them alike. A sharp scene costs the sharp tower and the gate; a flagged one adds the restorer and the robust
tower's encodes (1, 2 or 8 of them in one batch for none, flip, d8). One torch thread unless ``--threads``.

    python eval/fallback_cost.py                          # prints a JSON line; --out FILE writes it too
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlfss.data.perturb import apply_image, parse_perturbation  # noqa: E402
from vlfss.data.synthetic import generate_scene  # noqa: E402
from vlfss.io_utils import atomic_write_text  # noqa: E402
from vlfss.labeling.precision import cpu_flags  # noqa: E402
from vlfss.modeling.config import SYMMETRIES, SegmenterConfig  # noqa: E402
from vlfss.segmenter import Segmenter  # noqa: E402


def measure(repeats: int, warmup: int, blur: float) -> dict:
    """Median milliseconds per ``encode`` for each arm, and how many calls the gate flagged."""
    segs = {m: Segmenter.from_config(SegmenterConfig(mode="training-free", feature_cache_items=0, robust_symmetry=m))
            for m in SYMMETRIES}
    sharp = generate_scene(12345, 0).image  # a world seed no split uses
    blurred = apply_image(parse_perturbation(f"blur:{blur:g}"), sharp)
    arms = [("sharp", segs["none"], sharp)] + [(f"flagged, {m}", s, blurred) for m, s in segs.items()]
    times: dict[str, list[float]] = {name: [] for name, _, _ in arms}
    for r in range(warmup + repeats):
        for name, seg, image in arms:
            t = time.perf_counter()
            seg.encode([image])
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    flagged = {m: s.degraded_encodes for m, s in segs.items()}
    if flagged["none"] != warmup + repeats:
        raise SystemExit(f"the gate did not flag every blur:{blur:g} call ({flagged}); pick a stronger --blur")
    return {"ms": {k: round(1000 * statistics.median(v), 1) for k, v in times.items()}, "flagged_calls": flagged}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=55, help="timed calls per arm (the median is reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls per arm first")
    ap.add_argument("--blur", type=float, default=1.0, help="Gaussian blur sigma of the flagged scene")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.blur <= 0 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1, --warmup >= 0, --blur > 0")
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    res = {**measure(args.repeats, args.warmup, args.blur), "threads": args.threads, "torch": torch.__version__,
           "bf16_units": sorted(f for f in ("amx_bf16", "avx512_bf16") if f in flags)}
    line = json.dumps(res)
    print(line)
    if args.out:
        atomic_write_text(args.out, line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
