"""Atomic writes: the old file or the whole new one, never half; ordinary permissions; no temporary left."""

from __future__ import annotations

import json
import os

import pytest
import torch

from vlfss.io_utils import atomic_save_safetensors, atomic_write_json, atomic_write_text


def _expected_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_written_files_get_the_permissions_open_would_give(tmp_path):
    """Files a user shares (heads, prompts, weights) must not come out owner-only (mkstemp's default)."""
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_save_safetensors({"x": torch.zeros(2)}, tmp_path / "w.safetensors")
    for name in ("a.json", "w.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == _expected_mode(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "w.safetensors"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    atomic_save_safetensors({"x": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(AttributeError):  # safetensors fails on the value, before any byte is written
        atomic_save_safetensors({"x": "not a tensor"}, path)  # type: ignore[dict-item]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_json_reports_are_written_whole_into_a_new_folder(tmp_path):
    path = tmp_path / "runs" / "report.json"
    atomic_write_json(path, {"flagged": 3, "kinds": ["blurred"]})
    assert json.loads(path.read_text()) == {"flagged": 3, "kinds": ["blurred"]}
    assert path.read_text().endswith("\n") and [p.name for p in path.parent.iterdir()] == ["report.json"]
