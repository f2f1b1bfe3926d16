"""A training run's log: JSON lines in ``out_dir/log.jsonl`` and, when asked and installed, TensorBoard scalars."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLog:
    """log.jsonl (+ TensorBoard) written by the main rank only; other ranks get a no-op log."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, append: bool) -> None:
        self.enabled = enabled
        self.file = open(out / "log.jsonl", "a" if append else "w") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled and tensorboard:
            try:  # optional: tensorboard is not a dependency of vlfss
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; logging to log.jsonl only (pip install tensorboard)")

    def write(self, rec: dict[str, Any]) -> None:
        """One record: a line of JSON; its numbers (and nested {mode: {metric: value}} scores) as scalars."""
        if not self.enabled:
            return
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
                elif isinstance(v, dict):
                    for mode, d in v.items():
                        for name, val in d.items():
                            self.tb.add_scalar(f"{k}/{mode}/{name}", val, rec["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
