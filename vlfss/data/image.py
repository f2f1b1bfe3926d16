"""Reading and checking user images and masks; every problem is an InputError naming the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError

ImageLike = Union[str, Path, np.ndarray, "PIL.Image.Image"]  # noqa: F821


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise InputError(f"image {path} does not exist; check the path")
    if not path.is_file():
        raise InputError(f"image {path} is not a file")
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image file PIL can read (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image {path} is corrupt or truncated ({e}); re-export it") from None
    return img


def _to_rgb_array(img, name: str) -> np.ndarray:
    """PIL image of any mode (RGBA, L, P, I;16, I, F, CMYK) -> H x W x 3 uint8."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size else 1.0
        a = (a / (hi if hi > 0 else 1.0) * 255.0).round().astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        from PIL import Image

        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image(x: ImageLike, name: str = "image") -> np.ndarray:
    """Path, PIL image or array -> RGB H x W x 3 uint8 (grayscale, RGBA, palette, 16-bit are converted)."""
    from PIL import Image

    if isinstance(x, (str, Path)):
        return _to_rgb_array(_open(Path(x)), str(x))
    if isinstance(x, Image.Image):
        return _to_rgb_array(x, name)
    if isinstance(x, np.ndarray):
        a = x
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise InputError(f"{name}: expected an H x W x 3 array, got shape {x.shape}")
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        if a.shape[2] == 4:
            a = a[..., :3]
        if a.dtype == np.uint16:
            a = (a.astype(np.float64) / max(1, int(a.max())) * 255).round().astype(np.uint8)
        elif a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0 and a.max() <= 1:
                a = (a * 255).round().astype(np.uint8)
            else:
                raise InputError(f"{name}: array dtype {a.dtype} unsupported; pass uint8 0-255 or float 0-1")
        if min(a.shape[:2]) < 1:
            raise InputError(f"{name}: empty image of shape {x.shape}")
        return np.ascontiguousarray(a)
    import torch

    if isinstance(x, torch.Tensor):
        return load_image(x.detach().cpu().numpy().transpose(1, 2, 0) if x.ndim == 3 and x.shape[0] in (1, 3)
                          else x.detach().cpu().numpy(), name)
    raise InputError(f"{name}: expected a path, PIL image or array, got {type(x).__name__}")


def load_mask(x: ImageLike, image_shape: tuple[int, int] | None = None, name: str = "mask",
              allow_empty: bool = False) -> np.ndarray:
    """A binary support mask -> H x W uint8 in {0, 1, 255} (255 = ignore).

    Accepted encodings: {0,1}, {0,255}, {0,1,255}; RGB masks with equal channels are read as gray.
    The mask must have the same size as its image and at least one foreground pixel.
    """
    from PIL import Image

    if isinstance(x, (str, Path)):
        img = _open(Path(x))
        a = np.asarray(img if img.mode in ("L", "P", "1", "I;16", "I") else img.convert("RGB"))
    elif isinstance(x, Image.Image):
        a = np.asarray(x)
    else:
        a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if a.ndim == 3:
        if not (a[..., :1] == a[..., : min(3, a.shape[2])]).all():
            raise InputError(f"{name}: colour mask; pass a single-channel mask with values 0/1 or 0/255")
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(f"{name}: expected an H x W mask, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    values = set(np.unique(a).tolist())
    if values <= {0, 1}:
        out = a.astype(np.uint8)
    elif values <= {0, 255}:
        out = (a == 255).astype(np.uint8)
    elif values <= {0, 1, 255}:
        out = a.astype(np.uint8)
    else:
        shown = sorted(values)[:6]
        raise InputError(f"{name}: mask values {shown}... are not binary; use 0/1 or 0/255 (255 may mark "
                         "ignored pixels when 1 is foreground)")
    if image_shape is not None and tuple(out.shape) != tuple(image_shape[:2]):
        raise InputError(f"{name}: mask size {out.shape[1]}x{out.shape[0]} differs from its image "
                         f"{image_shape[1]}x{image_shape[0]}; resize the mask to the image")
    if not allow_empty and not (out == 1).any():
        raise InputError(f"{name}: the mask has no foreground pixels; mark the object with 1 (or 255)")
    return np.ascontiguousarray(out)
