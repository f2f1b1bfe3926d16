"""Backbone registry (placeholder during bootstrap; filled in below)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def register_open_clip_configs() -> None:
    """Make open_clip know the project's model configs (vlfss/assets/*.json). Idempotent."""
    import open_clip

    for cfg in sorted(ASSETS.glob("*.json")):
        if cfg.stem not in open_clip.list_models():
            open_clip.add_model_config(cfg)
