"""One image decoder: a file gives the same pixels (and feature-cache key) through `segment` and through every
dataset reader, by one documented convention (vlfss/data/image.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlfss.cache import content_hash
from vlfss.data.base import read_label, read_label_bytes, read_rgb, read_rgb_bytes
from vlfss.data.folder import FolderDataset
from vlfss.data.image import load_image, load_mask
from vlfss.errors import DataError, InputError

H, W = 6, 10


def _rgba() -> Image.Image:
    a = np.zeros((H, W, 4), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 200, 40, 90
    a[..., 3] = np.linspace(0, 255, W).astype(np.uint8)[None, :]  # transparent .. opaque
    return Image.fromarray(a, "RGBA")


def _gray16() -> Image.Image:
    return Image.fromarray(np.linspace(0, 40000, H * W).astype(np.uint16).reshape(H, W))  # not the full range


def _palette(transparent: bool) -> Image.Image:
    img = Image.fromarray((np.arange(H * W) % 4).astype(np.uint8).reshape(H, W), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 30, 60, 90] + [0] * 756)
    if transparent:
        img.info["transparency"] = 2
    return img


def _rotated_jpeg_bytes() -> bytes:
    """A 6 x 10 JPEG tagged "rotate 90 degrees clockwise" (EXIF orientation 6): upright it is 10 x 6."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


INPUTS = {
    "rgba": _rgba,
    "gray16": _gray16,
    "palette": lambda: _palette(False),
    "palette_transparent": lambda: _palette(True),
    "gray": lambda: Image.fromarray(np.arange(H * W, dtype=np.uint8).reshape(H, W)),
    "gray_alpha": lambda: _rgba().convert("LA"),
    "rgb": lambda: Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)),
}


def _write(folder, kind: str) -> tuple:
    """``kind`` as folder dataset ``root`` (one image, an all-background mask); returns (image path, root)."""
    root = folder / kind
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("thing\n")
    if kind == "exif":
        path = root / "images" / "x.jpg"
        path.write_bytes(_rotated_jpeg_bytes())
        mask_shape = (W, H)
    else:
        path = root / "images" / "x.png"
        INPUTS[kind]().save(path)
        mask_shape = (H, W)
    Image.fromarray(np.zeros(mask_shape, np.uint8)).save(root / "masks" / "x.png")
    return path, root


@pytest.mark.parametrize("kind", [*INPUTS, "exif"])
def test_segment_and_dataset_paths_decode_identically(tmp_path, kind):
    path, root = _write(tmp_path, kind)
    user = load_image(str(path))  # what `vlfss segment` and Segmenter.segment(path) see
    assert user.dtype == np.uint8 and user.shape[2] == 3
    for other in (read_rgb(path), read_rgb_bytes(path.read_bytes(), "row 0"), FolderDataset(root).load_image(0),
                  load_image(Image.open(path))):
        assert np.array_equal(user, other)
    assert content_hash(user) == content_hash(FolderDataset(root).load_image(0))  # same feature-cache key


def test_the_convention():
    rgba = load_image(_rgba())
    assert (rgba[:, 0] == 255).all()  # fully transparent -> white
    assert rgba[0, -1].tolist() == [200, 40, 90]  # opaque -> as stored
    a = int(np.linspace(0, 255, W).astype(np.uint8)[4])
    assert rgba[0, 4, 0] == round((200 * a + 255 * (255 - a)) / 255)  # alpha blend over white
    gray16 = np.asarray(_gray16()).astype(np.int64)
    assert np.array_equal(load_image(_gray16())[..., 0], np.round(gray16 * 255 / 65535).astype(np.uint8))
    dark = Image.fromarray(np.full((2, 2), 4095, np.uint16))  # a 12-bit frame: dark, not stretched to white
    assert (load_image(dark) == 16).all()
    pal = load_image(_palette(False))
    assert pal[0, :4].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [30, 60, 90]]
    assert load_image(_palette(True))[0, 2].tolist() == [255, 255, 255]  # the transparent index
    gray = load_image(INPUTS["gray"]())
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_arrays_follow_the_same_convention():
    assert np.array_equal(load_image(np.asarray(_rgba())), load_image(_rgba()))
    assert np.array_equal(load_image(np.asarray(_gray16())), load_image(_gray16()))
    assert np.array_equal(load_image(np.asarray(INPUTS["gray"]())), load_image(INPUTS["gray"]()))
    with pytest.raises(InputError, match="0..1"):
        load_image(np.full((2, 2, 3), 7.5, np.float32))
    with pytest.raises(InputError, match="int64"):
        load_image(np.zeros((2, 2, 3), np.int64))


def test_exif_orientation_turns_images_and_masks_alike(tmp_path):
    (tmp_path / "p.jpg").write_bytes(_rotated_jpeg_bytes())
    assert load_image(tmp_path / "p.jpg").shape == (W, H, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    mask = np.zeros((H, W), np.uint8)
    mask[0, 0] = 1
    Image.fromarray(mask).save(tmp_path / "m.png", exif=exif.tobytes())
    turned = np.rot90(mask, -1)  # orientation 6: rotate 90 degrees clockwise
    assert np.array_equal(read_label(tmp_path / "m.png"), turned)
    assert np.array_equal(load_mask(tmp_path / "m.png"), turned)


def test_one_mask_reader(tmp_path):
    lab = np.array([[0, 1, 1], [255, 0, 1]], np.uint8)
    img = Image.fromarray(lab).convert("P")
    img.putpalette([i % 256 for i in range(768)])
    img.putdata(lab.ravel().tolist())
    img.save(tmp_path / "p.png")
    Image.fromarray(np.repeat(lab[..., None], 3, 2)).save(tmp_path / "rgb.png")
    Image.fromarray(lab.astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("p.png", "rgb.png", "i16.png"):
        path = tmp_path / name
        assert np.array_equal(read_label(path), lab)
        assert np.array_equal(read_label_bytes(path.read_bytes(), name), lab)
        assert np.array_equal(load_mask(path), lab)  # {0, 1, 255}: 255 ignored
    Image.fromarray(np.array([[[1, 2, 3]]], np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(InputError, match="colour.png.*single-channel"):
        load_mask(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png.*single-channel"):
        read_label(tmp_path / "colour.png")


def test_errors_name_the_file_with_the_callers_error_type(tmp_path):
    with pytest.raises(InputError, match="missing.png.*does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="missing.png.*does not exist"):
        read_rgb(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match="row 3"):
        read_rgb_bytes(b"not an image", "row 3")
