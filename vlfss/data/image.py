"""The one image and mask decoder. User input (``segment``, supports, prompt tuning) and every dataset reader
decode through these functions, so one file gives the same pixels, and the same feature-cache key, everywhere.

The convention, for files, PIL images and arrays alike:

* 8-bit RGB is taken as stored; grayscale is replicated to three channels; palette images go through their
  palette.
* 16-bit (``I;16`` files, ``uint16`` arrays) is scaled by the format's range: ``round(v * 255 / 65535)``. Not
  by the image's own maximum, which would brighten a dark frame and map different files to the same pixels.
  ``I`` (32-bit integer; older Pillow opens 16-bit PNGs so) uses the same range, clipped. Float (``F`` files,
  float arrays) must lie in 0..1.
* Alpha is composited over white, ``(rgb * a + 255 * (255 - a)) / 255`` rounded: a transparent pixel has no
  colour, and white is what viewers, browsers and documents show behind a cut-out, so the model sees what the
  user saw. Opaque pixels are unchanged; the benchmarks' JPEGs have no alpha.
* EXIF orientation is applied, to images and masks alike: the image is segmented upright, as every viewer shows
  it (and as cv2.imread, used by PFENet and mmseg, reads it); a file without the tag is untouched.
* Masks and label maps keep their stored values (palette indices, not colours); RGB(A) masks are accepted
  when their colour channels are equal; 16-bit masks must hold values 0..255.

Errors name the file and the fix; user input raises ``InputError``, dataset readers pass ``DataError``.
PIL is imported at the top: decoding is this module's job. torch is imported only to accept tensors.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError, VlfssError

ImageLike = Union[str, Path, np.ndarray, Image.Image]
Source = Union[str, Path, bytes, bytearray]  # an encoded image: a file path or the file's bytes
ORIENTATION_TAG = 0x0112  # EXIF orientation; 1 = upright
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit (and 32-bit integer) single-channel modes


# ------------------------------------------------------------------------------------------ files
def open_image(source: Source, where: str | None = None, error: type[VlfssError] = InputError) -> Image.Image:
    """Open and fully decode an image file (path or bytes), upright; ``error`` naming ``where`` if it cannot be."""
    where = where or str(source)
    if isinstance(source, (bytes, bytearray)):
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise error(f"image file {where} does not exist; check the path")
        if not path.is_file():
            raise error(f"{where} is not a file; pass an image file (PNG, JPEG, ...)")
        fp = open(path, "rb")  # closed by the with below
    try:
        with fp:
            img = Image.open(fp)
            img.load()
    except UnidentifiedImageError:
        raise error(f"{where} is not an image file PIL can read (PNG, JPEG, ...), or it is empty") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise error(f"image file {where} is corrupt or truncated ({e}); re-export it") from None
    return upright(img)


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation tag says (the same object when there is no tag)."""
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):  # an unreadable EXIF block: take the pixels as stored
        return img
    return ImageOps.exif_transpose(img) if orientation not in (None, 1) else img


# ------------------------------------------------------------------------------------------ pixels
def over_white(rgba: np.ndarray) -> np.ndarray:
    """H x W x 4 uint8 -> H x W x 3 uint8, composited over white with exact integer rounding."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def wide_to_uint8(a: np.ndarray) -> np.ndarray:
    """16-bit values (any integer array; clipped to 0..65535) -> uint8 by the format's range."""
    return np.round(np.clip(a.astype(np.float64), 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)


def float_to_uint8(a: np.ndarray, where: str, error: type[VlfssError] = InputError) -> np.ndarray:
    """Float values in 0..1 -> uint8; ``error`` naming ``where`` for any other range."""
    if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1 or np.isnan(a).any()):
        raise error(f"{where}: float image values must lie in 0..1 (found {np.nanmin(a):g}..{np.nanmax(a):g}); "
                    "pass uint8 0-255 or float 0-1, or save the file as an 8- or 16-bit image")
    return np.round(a * 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image, where: str = "<image>", error: type[VlfssError] = InputError) -> np.ndarray:
    """A PIL image of any common mode -> H x W x 3 uint8 RGB, by the module's convention."""
    mode = img.mode
    if mode in _WIDE_MODES or mode == "F":
        a = np.asarray(img)
        gray = float_to_uint8(a, where, error) if mode == "F" else wide_to_uint8(a)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        return over_white(np.asarray(img.convert("RGBA")))
    if mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise error(f"cannot convert image {where} (mode {mode}) to RGB: {e}; re-export it as RGB") from None
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def array_to_rgb(x: np.ndarray, name: str = "image", error: type[VlfssError] = InputError) -> np.ndarray:
    """An array (H x W, H x W x 1/3/4; uint8, uint16 or float 0..1) -> H x W x 3 uint8, by the same convention."""
    a = np.asarray(x)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise error(f"{name}: expected an H x W x 3 array, got shape {x.shape}")
    if min(a.shape[:2]) < 1:
        raise error(f"{name}: empty image of shape {x.shape}")
    if a.dtype == np.uint16:
        a = wide_to_uint8(a)
    elif np.issubdtype(a.dtype, np.floating):
        a = float_to_uint8(a, name, error)
    elif a.dtype != np.uint8:
        raise error(f"{name}: array dtype {a.dtype} unsupported; pass uint8 0-255, uint16 or float 0-1")
    if a.shape[2] == 4:
        a = over_white(a)
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def pil_to_label(img: Image.Image, where: str = "<mask>", error: type[VlfssError] = InputError) -> np.ndarray:
    """A PIL mask / label map -> H x W uint8 of its stored values (palette indices, not colours)."""
    mode = img.mode
    if mode in ("L", "P", "1"):
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if mode in _WIDE_MODES or mode == "F":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255 or (mode == "F" and (arr != np.round(arr)).any())):
            raise error(f"mask {where} (mode {mode}) holds values {arr.min()}..{arr.max()}; a mask's values must be "
                        "whole labels 0..255 (save it as an 8-bit L or P PNG)")
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(img)
        chans = arr[..., : (1 if mode == "LA" else 3)]
        if chans.shape[2] > 1 and not np.all(chans == chans[..., :1]):
            raise error(f"mask {where} is a colour ({mode}) image; a mask must be single-channel (an 8-bit L or P "
                        "PNG) whose pixel values are the labels")
        return np.ascontiguousarray(chans[..., 0].astype(np.uint8))
    raise error(f"mask {where} has unsupported image mode {mode}; save it as an 8-bit L or P PNG")


# ------------------------------------------------------------------------------------------ readers
def decode_rgb(source: Source, where: str | None = None, error: type[VlfssError] = InputError) -> np.ndarray:
    """An image file (path or bytes) -> H x W x 3 uint8 RGB."""
    where = where or str(source)
    return pil_to_rgb(open_image(source, where, error), where, error)


def decode_label(source: Source, where: str | None = None, error: type[VlfssError] = InputError) -> np.ndarray:
    """A mask / label-map file (path or bytes) -> H x W uint8 of its stored values."""
    where = where or str(source)
    return pil_to_label(open_image(source, where, error), where, error)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an H x W (L) or H x W x 3 (RGB) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an H x W x 3 uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ user input
def load_image(x: ImageLike, name: str = "image") -> np.ndarray:
    """Path, PIL image, array or tensor -> RGB H x W x 3 uint8 (InputError naming ``name`` when it cannot be)."""
    if isinstance(x, (str, Path)):
        return decode_rgb(Path(x), str(x))
    if isinstance(x, Image.Image):
        return pil_to_rgb(upright(x), name)
    if isinstance(x, np.ndarray):
        return array_to_rgb(x, name)
    if hasattr(x, "detach"):  # a torch tensor: C x H x W (C = 1 or 3) or H x W x C
        a = x.detach().cpu().numpy()
        return array_to_rgb(a.transpose(1, 2, 0) if a.ndim == 3 and a.shape[0] in (1, 3) else a, name)
    raise InputError(f"{name}: expected a path, PIL image or array, got {type(x).__name__}")


def _binary(a: np.ndarray, name: str) -> np.ndarray:
    """Mask values {0,1} / {0,255} / {0,1,255} -> {0, 1, 255} (255 = ignore when 1 marks the object)."""
    values = set(np.unique(a).tolist())
    if values <= {0, 1}:
        return a.astype(np.uint8)
    if values <= {0, 255}:
        return (a == 255).astype(np.uint8)
    if values <= {0, 1, 255}:
        return a.astype(np.uint8)
    shown = sorted(values)[:6]
    raise InputError(f"{name}: mask values {shown}... are not binary; use 0/1 or 0/255 (255 may mark "
                     "ignored pixels when 1 is foreground)")


def load_mask(x: ImageLike, image_shape: tuple[int, int] | None = None, name: str = "mask",
              allow_empty: bool = False) -> np.ndarray:
    """A binary support mask -> H x W uint8 in {0, 1, 255} (255 = ignore).

    Files and PIL images are decoded like label maps (``pil_to_label``); arrays may be H x W or H x W x C with
    equal channels, of any integer or bool dtype. Accepted values: {0,1}, {0,255}, {0,1,255}. The mask must have
    its image's size and, unless ``allow_empty``, at least one foreground pixel.
    """
    if isinstance(x, (str, Path)):
        a = decode_label(Path(x), str(x))
    elif isinstance(x, Image.Image):
        a = pil_to_label(upright(x), name)
    else:
        a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        if a.ndim == 3:
            if not (a[..., :1] == a[..., : min(3, a.shape[2])]).all():
                raise InputError(f"{name}: colour mask; pass a single-channel mask with values 0/1 or 0/255")
            a = a[..., 0]
    if a.ndim != 2:
        raise InputError(f"{name}: expected an H x W mask, got shape {a.shape}")
    out = _binary(a.astype(np.uint8) if a.dtype == bool else a, name)
    if image_shape is not None and tuple(out.shape) != tuple(image_shape[:2]):
        raise InputError(f"{name}: mask size {out.shape[1]}x{out.shape[0]} differs from its image "
                         f"{image_shape[1]}x{image_shape[0]}; resize the mask to the image")
    if not allow_empty and not (out == 1).any():
        raise InputError(f"{name}: the mask has no foreground pixels; mark the object with 1 (or 255)")
    return np.ascontiguousarray(out)
