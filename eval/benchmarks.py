"""The standard evaluation protocols as data, and a runner that turns one into a `vlfss eval` call.

    PYTHONPATH=. python eval/benchmarks.py --list
    PYTHONPATH=. python eval/benchmarks.py pascal5i --data-root /data/VOCdevkit -- --model ViT-B-16 \
        --pretrained openai --mode training-free --out runs/pascal

Everything after ``--`` goes to `vlfss eval` unchanged (and may override the protocol's flags).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Protocol:
    """One published evaluation protocol."""

    name: str  # protocol id used on the command line
    benchmark: str  # vlfss benchmark name (vlfss.data.list_benchmarks)
    split: str  # split scored
    folds: tuple[int, ...]  # folds scored (the mean over them is the headline)
    episodes: int  # episodes per fold and seed
    query_sampling: str  # "pair" (uniform over image-class pairs) or "class" (class first, balanced)
    shots: tuple[int, ...] = (0, 1, 5)  # K values; 0 is text only
    seeds: tuple[int, ...] = (0,)  # episode seeds
    options: dict[str, Any] = field(default_factory=dict)  # reader options (--bench-opt / --split-convention)
    reference: str = ""  # who uses it, and how we differ


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("pascal5i", "pascal5i", "val", (0, 1, 2, 3), 1000, "pair",
             reference="HSNet / DCAMA / Matcher: 1,000 episodes per fold on VOC2012 val with SBD masks "
                       "(SegmentationClassAug); HSNet takes the first 1,000 image-class pairs, here they are "
                       "seeded uniform draws"),
    Protocol("pascal5i-pfenet", "pascal5i", "val", (0, 1, 2, 3), 5000, "pair",
             reference="PFENet: 5,000 episodes per fold"),
    Protocol("pascal5i-10seeds", "pascal5i", "val", (0, 1, 2, 3), 1000, "pair", seeds=tuple(range(10)),
             reference="PI-CLIP / HDMNet: the mean over 10 seeds of 1,000 episodes"),
    Protocol("coco20i", "coco20i", "val", (0, 1, 2, 3), 1000, "class", options={"convention": "interleaved"},
             reference="HSNet / PFENet (use_split_coco): fold i = classes {4k+i+1}, 1,000 episodes per fold, "
                       "class-balanced queries"),
    Protocol("coco20i-consecutive", "coco20i", "val", (0, 1, 2, 3), 1000, "class",
             options={"convention": "consecutive"},
             reference="fold i = classes 20i+1..20i+20 (the other published split)"),
    Protocol("fss1000", "fss1000", "test", (0,), 2400, "pair",
             reference="FSS-1000 test split (240 classes of the 520/240/240 split); HSNet uses each of the 2,400 "
                       "test images once as a query, here 2,400 seeded uniform draws"),
    Protocol("synthetic", "synthetic", "test", (0, 1, 2, 3), 1000, "class",
             reference="the project's synthetic world (20 texture classes, 4 folds of 5); 500 test images at "
                       "96 px; the embedded default's README table"),
)}


def eval_argv(protocol: Protocol | str, data_root: str | None = None, extra: list[str] | None = None) -> list[str]:
    """The `vlfss eval` arguments of ``protocol`` (``extra`` is appended, so later flags override)."""
    p = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    argv = ["--benchmark", p.benchmark, "--split", p.split, "--fold", *map(str, p.folds),
            "--shots", *map(str, p.shots), "--episodes", str(p.episodes), "--seeds", *map(str, p.seeds),
            "--query-sampling", p.query_sampling]
    opts = dict(p.options)
    if "convention" in opts:
        argv += ["--split-convention", str(opts.pop("convention"))]
    if opts:
        argv += ["--bench-opt", *(f"{k}={v}" for k, v in opts.items())]
    if data_root is not None:
        argv += ["--data-root", str(data_root)]
    return argv + list(extra or [])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description="Run a standard protocol through `vlfss eval`.")
    ap.add_argument("protocol", nargs="?", choices=sorted(PROTOCOLS))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--list", action="store_true", help="list the protocols and exit")
    ap.add_argument("--print", action="store_true", help="print the vlfss eval command instead of running it")
    args = ap.parse_args(argv)
    if args.list or args.protocol is None:
        for p in PROTOCOLS.values():
            print(f"{p.name:22s} {p.benchmark}/{p.split}, folds {list(p.folds)}, {p.episodes} episodes, "
                  f"seeds {list(p.seeds)}: {p.reference}")
        return 0
    cmd = eval_argv(args.protocol, args.data_root, extra)
    if args.print:
        import shlex

        print("vlfss eval " + shlex.join(cmd))
        return 0
    from vlfss.cli import main as vlfss_main

    return vlfss_main(["eval", *cmd])


if __name__ == "__main__":
    raise SystemExit(main())
