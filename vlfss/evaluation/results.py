"""The result of an evaluation: one ``ResultRow`` per fold x mode x input x shots x seed, and ``EvalResults``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .report import markdown_table


@dataclass
class ResultRow:
    """One line of results.jsonl: one fold x mode x input x shots x seed."""

    benchmark: str  # benchmark name
    split: str  # dataset split scored
    fold: int  # fold whose novel classes were scored
    seed: int  # episode seed
    mode: str  # training-free | learned | baseline
    input: str  # text | examples | text+examples | all-foreground | oracle-patch-grid
    shots: int  # K supports per class (0 for text and baselines)
    n_way: int  # classes per episode
    resolution: str  # "original" label size or "resized" to the encoder input
    metrics: dict[str, Any]  # RowStats.metrics(): miou, fb_iou, per_class, ..., ece, risk_coverage
    episode_hash: str  # content hash of the episode list (same for every row of a fold and seed)
    episodes_file: str | None  # where the episode list was saved / read
    config_hash: str  # hash of model, head, options: rows with equal hashes are comparable and resumable
    model: str  # backbone model id
    head: str | None  # digest of the learned head's weights (learned rows) or None
    variant: str  # dense variant of the features used
    command: str  # the command line (or "python API")
    versions: dict[str, str]  # python and package versions
    adapt_steps: int = 0  # test-time adaptation steps asked for (learned rows with supports; validated per request)
    perturb: str = "clean"  # corruption applied to query and supports ("clean", "jpeg:30", "blur:1", ...)
    inference: str = "auto"  # SegmenterConfig.inference: how images were encoded (auto: slide or resize per image)

    def to_json(self) -> dict[str, Any]:
        """The row as results.jsonl holds it: metrics flattened in, nan/inf as None."""
        d = dataclasses.asdict(self)
        metrics = d.pop("metrics")
        d.update(metrics)
        return finite(d)


@dataclass
class EvalResults:
    """Rows of a run (including rows resumed from out_dir) and where the outputs went."""

    rows: list[dict[str, Any]]  # JSON-ready rows; see ``ResultRow``
    cache: dict[str, Any]  # feature-cache hits, misses, hit_rate, image_encodes, distinct_images, variants
    files: dict[str, str] = field(default_factory=dict)  # name -> path of each written output

    def table(self) -> str:
        """The markdown mIoU table (rows: mode/input/shots; columns: folds and mean)."""
        return markdown_table(self.rows)

    def get(self, mode: str, input: str, shots: int, fold: int | None = None,
            seed: int | None = None) -> list[dict[str, Any]]:
        """Rows matching the given keys."""
        return [r for r in self.rows if r["mode"] == mode and r["input"] == input and r["shots"] == shots
                and (fold is None or r["fold"] == fold) and (seed is None or r["seed"] == seed)]


def finite(x: Any) -> Any:
    """nan/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def row_key(row: dict[str, Any]) -> tuple:
    """What makes a row unique within a results file (for --resume); learned rows also by their head."""
    return (row["config_hash"], row.get("head"), row["episode_hash"], row["fold"], row["seed"], row["mode"],
            row["input"], row["shots"], row.get("perturb", "clean"))
