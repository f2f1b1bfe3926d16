"""Result rows: the results.jsonl file (atomic appends), a markdown table, a summary and PNG plots.

Rows are the dicts of ``results.jsonl`` (see ``vlfss.evaluation.ResultRow``). Aggregation follows the field:
per fold the mean over seeds, then the mean over folds; with several seeds the table also gives the 95% CI of
the fold-mean over seeds. Plots use ``matplotlib.figure.Figure`` directly (no pyplot state, no display).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_bytes, atomic_write_text
from .metrics import mean_ci
from .options import CLEAN

logger = logging.getLogger(__name__)

_MODE_ORDER = {"training-free": 0, "learned": 1, "baseline": 2}
_INPUT_ORDER = {"text": 0, "examples": 1, "text+examples": 2, "all-foreground": 3, "oracle-patch-grid": 4}
MAX_CLASSES_PLOTTED = 60


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """(complete rows, whether the file ends with a torn line) of a results file."""
    data = Path(path).read_bytes()
    rows, torn = [], False
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        last = i == len(lines) - 1  # no newline after it: an interrupted append
        try:
            row = json.loads(line)
        except ValueError:
            if last:
                torn = True
                continue
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
        if last:
            torn = True  # parseable but unterminated: drop it too, it may be cut at a digit
            continue
        rows.append(row)
    return rows, torn


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single write + fsync, so an interrupted run leaves whole rows only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path} ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Replace a results file by ``rows`` (temporary file + rename)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows))


def _key(r: dict[str, Any]) -> tuple[str, str, int, str]:
    return (r["mode"], r["input"], int(r["shots"]), r.get("perturb") or CLEAN)


def _sort_key(k: tuple[str, str, int, str], perturbs: Sequence[str] = ()) -> tuple[int, int, int, int]:
    order = {p: i for i, p in enumerate((CLEAN, *perturbs))}
    return (order.get(k[3], len(order)), _MODE_ORDER.get(k[0], 9), k[2], _INPUT_ORDER.get(k[1], 9))


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return math.fsum(vals) / len(vals) if vals else None


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (mode, input, shots, perturbation): per-fold mIoU (mean over seeds), mean over folds, CI
    over seeds; corrupted entries (``perturb`` other than "clean") also carry ``drop``, their mean minus the
    clean row's over the same folds (negative: the corruption costs mIoU)."""
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    perturbs: list[str] = []
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
        if _key(r)[3] != CLEAN and _key(r)[3] not in perturbs:
            perturbs.append(_key(r)[3])
    out = []
    for key in sorted(groups, key=lambda k: _sort_key(k, perturbs)):
        rs = groups[key]
        folds = sorted({r["fold"] for r in rs})
        seeds = sorted({r["seed"] for r in rs})
        per_fold = {f: _mean([r["miou"] for r in rs if r["fold"] == f]) for f in folds}
        seed_means = []
        for s in seeds:
            vals = {r["fold"]: r["miou"] for r in rs if r["seed"] == s}
            if set(vals) == set(folds) and all(v is not None for v in vals.values()):
                seed_means.append(math.fsum(vals.values()) / len(vals))
        ci = mean_ci(seed_means)[1] if len(seed_means) > 1 else None
        per_class: dict[str, list[float]] = {}
        for r in rs:
            for name, v in (r.get("per_class") or {}).items():
                per_class.setdefault(name, []).append(v["iou"])
        rc = None
        curves = [r["risk_coverage"] for r in rs if r.get("risk_coverage")]
        if curves:
            rc = [{"reject": pt["reject"], "coverage": _mean([c[j]["coverage"] for c in curves]),
                   "miou": _mean([c[j]["miou"] for c in curves])} for j, pt in enumerate(curves[0])]
        out.append({
            "mode": key[0], "input": key[1], "shots": key[2], "perturb": key[3], "folds": per_fold, "seeds": seeds,
            "miou": _mean(list(per_fold.values())), "miou_ci_seeds": ci if ci is None or math.isfinite(ci) else None,
            "fb_iou": _mean([r["fb_iou"] for r in rs]), "episode_miou": _mean([r["episode_miou"] for r in rs]),
            "ece": _mean([r.get("ece") for r in rs]), "f1": _mean([r.get("f1") for r in rs]),
            "per_class": {n: _mean(v) for n, v in per_class.items()}, "risk_coverage": rc,
        })
    clean = {(e["mode"], e["input"], e["shots"]): e for e in out if e["perturb"] == CLEAN}
    for e in out:
        base = clean.get((e["mode"], e["input"], e["shots"]))
        if e["perturb"] != CLEAN:
            common = [f for f in e["folds"] if base and base["folds"].get(f) is not None
                      and e["folds"][f] is not None]
            e["drop"] = (math.fsum(e["folds"][f] - base["folds"][f] for f in common) / len(common)
                         if common else None)
    return out


def _pct(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def caption(rows: Sequence[dict[str, Any]]) -> str:
    """One line saying what the numbers are."""
    if not rows:
        return "no results"

    def one(field: str) -> str:
        vals = sorted({str(r.get(field)) for r in rows})
        return ", ".join(vals)

    eps = sorted({r.get("episodes") for r in rows if r.get("episodes") is not None})
    return (f"mIoU (%) on {one('benchmark')} ({one('split')} split), {'/'.join(map(str, eps))} episodes per fold, "
            f"seeds {one('seed')}, {one('n_way')}-way, labels at {one('resolution')} resolution; model {one('model')}")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows: mode / input / shots; columns: folds, mean (± 95% CI over seeds), FB-IoU, ECE (all in %)."""
    everything = summarize(rows)
    summary = [s for s in everything if s["perturb"] == CLEAN]
    if not summary:
        return "_no results_\n"
    folds = sorted({f for s in summary for f in s["folds"]})
    head = ["mode", "input", "shots", *[f"fold {f}" for f in folds], "mean", "FB-IoU", "ECE"]
    lines = [f"_{caption(rows)}_", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for s in summary:
        mean = _pct(s["miou"])
        if s["miou_ci_seeds"] is not None:
            mean += f" ± {_pct(s['miou_ci_seeds'])}"
        cells = [s["mode"], s["input"], str(s["shots"]), *[_pct(s["folds"].get(f)) for f in folds], mean,
                 _pct(s["fb_iou"]), _pct(s["ece"])]
        lines.append("| " + " | ".join(cells) + " |")
    corrupted = [s for s in everything if s["perturb"] != CLEAN]
    if corrupted:
        lines += ["", corruption_table(summary, corrupted)]
    return "\n".join(lines) + "\n"


def corruption_table(clean: Sequence[dict[str, Any]], corrupted: Sequence[dict[str, Any]]) -> str:
    """Rows: mode / input / shots; columns: clean mIoU, then each corruption's mIoU with its drop from clean
    (points, mean over the folds both were scored on)."""
    perturbs = list(dict.fromkeys(s["perturb"] for s in corrupted))
    by = {(s["mode"], s["input"], s["shots"], s["perturb"]): s for s in corrupted}
    head = ["mode", "input", "shots", "clean", *perturbs]
    lines = ["_Corruptions (same episodes; query and supports corrupted alike): mIoU (%) and change from clean "
             "in points_", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for c in clean:
        if c["mode"] == "baseline":
            continue
        cells = [c["mode"], c["input"], str(c["shots"]), _pct(c["miou"])]
        for p in perturbs:
            e = by.get((c["mode"], c["input"], c["shots"], p))
            if e is None or e["miou"] is None:
                cells.append("–")
            else:
                drop = "–" if e["drop"] is None else f"{100 * e['drop']:+.1f}"
                cells.append(f"{_pct(e['miou'])} ({drop})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plots
def _figure(w: float = 6.4, h: float = 4.2):
    from matplotlib.figure import Figure  # heavy optional library: loaded only when a plot is drawn

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def plot_miou_vs_shots(summary: list[dict[str, Any]], path: Path) -> str:
    """mIoU vs shots: per mode one line for examples and one for text+examples (starting at text-only)."""
    fig = _figure()
    ax = fig.add_subplot()
    by = {(s["mode"], s["input"], s["shots"]): s["miou"] for s in summary}
    for mode in [m for m in _MODE_ORDER if m != "baseline" and any(k[0] == m for k in by)]:
        for inp, style in (("text+examples", "-o"), ("examples", "--s")):
            pts = sorted((k[2], v) for k, v in by.items() if k[0] == mode and k[1] == inp and v is not None)
            if inp == "text+examples" and by.get((mode, "text", 0)) is not None:
                pts = [(0, by[(mode, "text", 0)])] + pts
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, label=f"{mode}: {inp}")
    for (mode, inp, _), v in by.items():
        if mode == "baseline" and v is not None:
            ax.axhline(100 * v, color="grey", ls=":" if inp.startswith("oracle") else "-.", lw=1, label=inp)
    shots = sorted({s["shots"] for s in summary})
    ax.set_xticks(shots)
    ax.set_xlabel("shots (0 = text only)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU vs shots (mean over folds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_per_class(summary: list[dict[str, Any]], path: Path) -> str:
    """Per-class IoU bars for text-only, the largest K (examples, text+examples) per mode, and the oracle."""
    kmax = max((s["shots"] for s in summary), default=0)
    series = [s for s in summary if (s["input"] == "text") or (s["shots"] == kmax and s["mode"] != "baseline")
              or s["input"] == "oracle-patch-grid"]
    names: list[str] = []
    for s in series:
        names += [n for n in s["per_class"] if n not in names]
    shown = names[:MAX_CLASSES_PLOTTED]
    fig = _figure(max(6.4, 0.25 * len(shown) * max(1, len(series)) / 2 + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for j, s in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(shown))]
        ys = [100 * (s["per_class"].get(n) or 0.0) for n in shown]
        ax.bar(xs, ys, width, label=f"{s['mode']}: {s['input']} {s['shots']}-shot")
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels(shown, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("IoU (%)")
    extra = f" (first {MAX_CLASSES_PLOTTED} of {len(names)})" if len(names) > len(shown) else ""
    ax.set_title("per-class IoU" + extra)
    ax.legend(fontsize=6)
    return _save(fig, path)


def plot_risk_coverage(summary: list[dict[str, Any]], path: Path) -> str:
    """mIoU of the kept pixels vs coverage, rejecting the least confident pixels of each query."""
    fig = _figure()
    ax = fig.add_subplot()
    for s in summary:
        rc = s.get("risk_coverage")
        if not rc:
            continue
        pts = [(p["coverage"], p["miou"]) for p in rc if p["coverage"] is not None and p["miou"] is not None]
        ax.plot([100 * c for c, _ in pts], [100 * m for _, m in pts], "-o", ms=3,
                label=f"{s['mode']}: {s['input']} {s['shots']}-shot")
    ax.invert_xaxis()
    ax.set_xlabel("coverage (% of pixels kept)")
    ax.set_ylabel("mIoU of kept pixels (%)")
    ax.set_title("risk-coverage (least confident pixels rejected)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | Path, plots: bool = True,
                 cache: dict[str, Any] | None = None) -> dict[str, str]:
    """table.md, summary.json and (optionally) the three PNG plots in ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    everything = summarize(rows)
    summary = [s for s in everything if s["perturb"] == CLEAN]  # the plots show the clean rows
    files = {"table": str(out / "table.md"), "summary": str(out / "summary.json")}
    atomic_write_text(out / "table.md", markdown_table(rows))
    atomic_write_text(out / "summary.json", json.dumps({"caption": caption(rows), "rows": everything,
                                                        "feature_cache": cache}, indent=1, default=str))
    if plots and summary:
        files["plot_miou_vs_shots"] = plot_miou_vs_shots(summary, out / "miou_vs_shots.png")
        files["plot_per_class"] = plot_per_class(summary, out / "per_class.png")
        files["plot_risk_coverage"] = plot_risk_coverage(summary, out / "risk_coverage.png")
    return files
