"""Model loading a user can trust: never silently random, the canonical weights for a bare name, offline failures
that come at once and say how to pass a local file, errors that name the user's own path. Nothing downloads:
offline is HF_HUB_OFFLINE=1 (conftest) or a monkeypatched network."""

from __future__ import annotations

import socket
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from vlfss.cli import main
from vlfss.errors import ModelError
from vlfss.modeling.backbones import (
    RANDOM,
    TINY_WEIGHTS,
    OutOfVocabularyWarning,
    TimmBackbone,
    build_backbone,
    default_tag,
    resolve_pretrained,
)

OFFLINE_BOUND_S = 20.0  # huggingface_hub's retries took ~45 s before; the fast path takes well under a second


@pytest.fixture()
def no_network(monkeypatch):
    """The hub switch off but every connection refused: what a machine without internet looks like."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_download)


def test_a_bare_open_clip_name_means_its_canonical_weights():
    import open_clip

    assert resolve_pretrained("ViT-B-16", None) == "openai"
    others = [m for m in open_clip.list_models() if open_clip.list_pretrained_tags_by_model(m)
              and "openai" not in open_clip.list_pretrained_tags_by_model(m)]
    assert others, "open_clip lists models without openai weights"
    for m in others[:10]:
        assert default_tag(m) == open_clip.list_pretrained_tags_by_model(m)[0]


def test_a_name_without_known_weights_is_refused_not_random(tiny_clip_name):
    with pytest.raises(ModelError, match=r"no known pretrained weights.*--pretrained /path/to/file.*random"):
        build_backbone(tiny_clip_name)


def test_random_weights_only_when_asked(tiny_clip_name):
    bb = build_backbone(tiny_clip_name, RANDOM)
    assert bb.model_id == f"open_clip:{tiny_clip_name}@random"


def test_bare_name_offline_fails_fast_and_says_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as e:
        build_backbone("ViT-B-16", cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < OFFLINE_BOUND_S
    msg = str(e.value)
    assert "'openai' weights of ViT-B-16" in msg and "HF_HUB_OFFLINE" in msg
    assert "--pretrained /path/to/file" in msg and "local-dir:" in msg


def test_unreachable_hub_fails_fast_without_trying_to_download(tmp_path, no_network):
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=r"cannot be reached.*--pretrained /path/to/file"):
        build_backbone("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < OFFLINE_BOUND_S


def _fake_hub_cache(root, repo: str, filename: str, data: bytes = b"weights") -> str:
    """The layout huggingface_hub's cache uses for one file of ``repo`` at revision 'main'."""
    folder = root / f"models--{repo.replace('/', '--')}"
    rev = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(rev)
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(data)
    return str(snap / filename)


def test_a_cached_tag_is_used_without_the_hub(tmp_path, no_network):
    from vlfss.modeling.backbones.open_clip_backbone import _tag_checkpoint

    path = _fake_hub_cache(tmp_path, "timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors")
    assert _tag_checkpoint("ViT-B-16", "openai", str(tmp_path)) == path


def test_a_bad_cached_or_given_file_names_the_file(tmp_path, tiny_clip_name):
    bad = tmp_path / "not-weights.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not-weights.safetensors"):
        build_backbone(tiny_clip_name, str(bad))


def test_missing_weights_file_names_the_users_path(tiny_clip_name, tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ModelError, match=f"{missing}.*does not exist"):
        build_backbone(tiny_clip_name, str(missing))


def test_tiny_with_a_missing_file_names_that_file_not_the_embedded_one(tmp_path):
    missing = tmp_path / "mine.safetensors"
    with pytest.raises(ModelError) as e:
        build_backbone("vlfss-tiny", str(missing))
    assert str(missing) in str(e.value) and "reinstall" not in str(e.value)
    assert str(TINY_WEIGHTS) not in str(e.value)


def test_tiny_weights_env_that_is_missing_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("VLFSS_TINY_WEIGHTS", str(tmp_path / "gone.safetensors"))
    with pytest.raises(ModelError, match="VLFSS_TINY_WEIGHTS=.*gone.safetensors"):
        build_backbone("vlfss-tiny")


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(ModelError, match=r"unknown pretrained tag 'nope'.*openai"):
        build_backbone("ViT-B-16", "nope")


def test_unknown_model_is_clear_error():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        build_backbone("no-such-model")


def test_non_vit_is_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr("vlfss.modeling.backbones.open_clip_backbone.unreachable_reason", lambda url=None: None)
    monkeypatch.setattr("vlfss.modeling.backbones.open_clip_backbone.download_hub_file", no_download)
    with pytest.raises(ModelError, match="not a plain ViT"):
        build_backbone("RN50", "openai", cache_dir=str(tmp_path))


def test_hub_and_local_dir_names_never_load_random_weights(tmp_path, no_network):
    with pytest.raises(ModelError, match=r"local-dir:.*open_clip_config.json"):
        build_backbone(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no weights file .*random"):
        build_backbone(f"local-dir:{tmp_path}")
    with pytest.raises(ModelError, match="cannot be reached"):
        build_backbone("hf-hub:someone/some-clip", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ModelError, match="drop --pretrained"):
        build_backbone("hf-hub:someone/some-clip", "openai")


def test_timm_default_weights_offline_fail_fast_and_random_is_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("vlfss.modeling.backbones.timm_backbone.cached_hub_file", lambda *a: None)  # empty cache
    with pytest.raises(ModelError, match=r"timm model 'resnet18'.*--pretrained /path/to/file"):
        TimmBackbone("resnet18")
    assert TimmBackbone("resnet18", RANDOM).model_id == "timm:resnet18@random"
    with pytest.raises(ModelError, match="missing.pth"):
        TimmBackbone("resnet18", str(tmp_path / "missing.pth"))


def test_transformers_offline_repo_and_missing_folder(tmp_path, no_network):
    with pytest.raises(ModelError, match=r"openai/clip-vit-base-patch16.*cannot be reached.*transformers:/path"):
        build_backbone("transformers:openai/clip-vit-base-patch16", cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match=f"{tmp_path / 'nope'}.*not a folder"):
        build_backbone(f"transformers:{tmp_path / 'nope'}")


def test_segment_with_a_bare_name_offline_writes_nothing_and_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    img = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    out = tmp_path / "out"
    code = main(["segment", str(img), "--text", "a cat", "--model", "ViT-B-16", "--out", str(out),
                 "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "'openai' weights of ViT-B-16" in err and "--pretrained /path/to/file" in err
    assert not any(out.glob("*"))


needs_tiny = pytest.mark.skipif(not TINY_WEIGHTS.is_file(), reason="tiny CLIP weights not shipped in this checkout")


@pytest.fixture(scope="module")
def tiny():
    return build_backbone("vlfss-tiny")


@needs_tiny
def test_tiny_warns_once_per_text_outside_its_world(tiny):
    with pytest.warns(OutOfVocabularyWarning) as rec:
        tiny.check_texts(["a cat", "a photo of a dog"])
    msg = str(rec[0].message)
    assert len(rec) == 1 and "'a cat'" in msg and "'a photo of a dog'" in msg
    assert "stripes" in msg and "dashes" in msg and "--model ViT-B-16 --pretrained openai" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.check_texts(["a cat"])  # already warned about
        tiny.check_texts(["stripes", "a striped blob", "dotted", "a plain background", "a zigzag"])


@needs_tiny
def test_tiny_segmenter_warns_for_a_cat_but_not_for_its_classes(tiny):
    from vlfss.segmenter import Segmenter, SegmenterConfig

    seg = Segmenter(build_backbone("vlfss-tiny"), SegmenterConfig(mode="training-free"))
    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the background prompts and class names are in its world
        seg.segment(image, texts=["stripes"])
    with pytest.warns(OutOfVocabularyWarning, match="'a cat'"):
        seg.segment(image, texts=["a cat"])
