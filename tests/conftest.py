"""Shared fixtures: tiny open_clip / transformers CLIP models with random weights, built here (no downloads).

Random weights are asked for explicitly (``pretrained="random"``): vlfss never builds a random CLIP otherwise.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 48, "layers": 3, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_name(tmp_path_factory) -> str:
    """Register a tiny open_clip ViT config (random weights) and return its name."""
    import open_clip

    name = "test-tiny-vit"
    if name not in open_clip.list_models():
        path = tmp_path_factory.mktemp("clipcfg") / f"{name}.json"
        path.write_text(json.dumps(TINY_CFG))
        open_clip.add_model_config(path)
    return name


@pytest.fixture(scope="session")
def tiny_clip_weights(tiny_clip_name, tmp_path_factory) -> str:
    """A seeded random checkpoint for the tiny config, saved as safetensors (loaded like a user's file)."""
    from safetensors.torch import save_file

    from vlfss.modeling.backbones import RANDOM, build_backbone

    torch.manual_seed(0)
    model = build_backbone(tiny_clip_name, RANDOM).model
    path = tmp_path_factory.mktemp("clipw") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_clip_name, tiny_clip_weights):
    from vlfss.modeling.backbones import build_backbone

    return build_backbone(tiny_clip_name, tiny_clip_weights)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def blob_scene(rng: np.random.Generator, h: int = 40, w: int = 56):
    """A random RGB image with one bright square object and its binary mask."""
    img = (rng.random((h, w, 3)) * 80).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    mask[y:y + h // 3, x:x + w // 3] = 1
    img[mask == 1] = (200, 180, 40)
    return img, mask
