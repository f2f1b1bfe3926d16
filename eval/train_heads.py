"""Meta-train the learned heads shipped with the tiny CLIP, on the synthetic benchmark.

Fold i's head is trained on the other folds' 15 classes (configs/synthetic/fold{i}.yaml) and lands in
``<assets>/head-<model>-fold{i}.safetensors``, so evaluation on fold i scores classes the head never saw;
the demo head is trained on all 20 classes (configs/synthetic/all.yaml) -> ``<assets>/head-<model>.safetensors``,
the file ``Segmenter`` loads by default in learned mode. The configs' step budget (1000 steps of 4 episodes on
1000 images, each with one augmented view) is sized for minutes per head on 2 CPU cores with the 96 px tiny
CLIP: measured 4.2-4.3 min per fold head with two heads training side by side, one thread each (the fold heads
validate 9 times, at 1 and 5 shots).

    python eval/train_heads.py                           # folds 0-3 and the demo head
    python eval/train_heads.py --only 2 all --resume     # some of them, continuing interrupted runs
    python eval/train_heads.py --set steps=20 val.episodes=5 --assets /tmp/heads   # a quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vlfss.config import load_config  # noqa: E402
from vlfss.engine.config import TrainConfig  # noqa: E402
from vlfss.engine.train import fit  # noqa: E402

TARGETS = ("0", "1", "2", "3", "all")


def train_one(target: str, args: argparse.Namespace) -> dict:
    """Train one head; returns its summary (with the exported path and wall time)."""
    name = "all" if target == "all" else f"fold{target}"
    cfg_path = Path(args.configs) / f"{name}.yaml"
    probe = load_config(TrainConfig, cfg_path, list(args.set))
    model = probe.segmenter.model
    assets = Path(args.assets)
    export = assets / (f"head-{model}.safetensors" if target == "all" else f"head-{model}-{name}.safetensors")
    overrides = [f"out_dir={Path(args.runs) / name}", f"export_path={export}", *args.set]
    cfg = load_config(TrainConfig, cfg_path, overrides)
    t0 = time.time()
    fit(cfg, resume=args.resume, overwrite=not args.resume)
    summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    return {**summary, "head": name, "export": str(export), "wall_s": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=TARGETS, default=list(TARGETS), help="which heads (default: all)")
    ap.add_argument("--configs", default=str(REPO / "configs" / "synthetic"), help="folder with fold*.yaml, all.yaml")
    ap.add_argument("--assets", default=str(REPO / "vlfss" / "assets"), help="where the finished heads go")
    ap.add_argument("--runs", default=str(REPO / "runs" / "heads"), help="checkpoints and logs per head")
    ap.add_argument("--resume", action="store_true", help="continue interrupted runs instead of starting over")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides for every head")
    args = ap.parse_args(argv)
    rows = [train_one(t, args) for t in args.only]
    print(f"{'head':6s} {'steps':>6s} {'kept':>5s} {'loss':>15s} {'val text':>9s} {'val shots':>9s} {'val both':>9s} "
          f"{'min':>5s}")
    for r in rows:
        val = r.get("val") or {}
        cells = [f"{100 * val[m]['miou']:9.1f}" if m in val else f"{'-':>9s}" for m in ("text", "shots", "text+shots")]
        loss = f"{r['first_loss']:.3f}->{r['last_loss']:.3f}" if r.get("first_loss") is not None else "-"
        kept = str(r.get("best_step", r["steps"]))  # keep_best: the step whose head was exported
        print(f"{r['head']:6s} {r['steps']:6d} {kept:>5s} {loss:>15s} {' '.join(cells)} "
              f"{r['wall_s'] / 60:5.1f}  -> {r['export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
