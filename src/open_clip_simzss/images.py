"""Images: the file extensions we read, loading any image users have, and pixel-layout coercion.

Two policies, one module. :func:`load_image` is lenient, for photos: anything Pillow reads (JPEG, PNG, WebP,
TIFF, BMP, GIF...), turned upright by its EXIF orientation; grey, palette and CMYK images become RGB;
transparent pixels are composited onto white; 16-bit images are scaled to 8 bits. :func:`to_uint8_image` is
strict, for the evaluation protocol: uint8 pixels only (a float image's range would be a guess).
"""
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# File extensions of images (lower case, no dot), in the order WebDataset samples are searched for their image.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "jfif", "ppm", "pgm")


class ImageError(Exception):
    """An image that cannot be read; the message is one line."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Any numeric pixel array -> uint8: 16-bit (and 32-bit int) values are scaled from 0..65535, floats from
    0..1 (or taken as 0..255 when larger), booleans to 0/255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array.astype(np.float32))
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype.itemsize == 1 or (array.size and int(array.max()) <= 255 and array.dtype != np.uint16):
            return np.clip(array, 0, 255).astype(np.uint8)
        # 16-bit range (uint16, or PIL's 32-bit "I" mode holding 16-bit PNG values): 65535 -> 255
        return np.clip((array.astype(np.float32) / 257.0) + 0.5, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {array.dtype}")


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    # Transparent pixels have arbitrary colours (often black): composite onto white, as viewers show them.
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)


def _rgb_array(array: np.ndarray) -> np.ndarray:
    array = _to_uint8(np.asarray(array))
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 2:  # grey + alpha
        return _flatten_alpha(np.concatenate([np.repeat(array[..., :1], 3, axis=2), array[..., 1:]], axis=2))
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        return _flatten_alpha(array)
    raise ImageError(f"expected an image array [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}")


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image -> upright RGB uint8 [H, W, 3] (EXIF orientation applied; see module docstring)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16/32-bit grey: scale, not clip
        arr = np.asarray(img)
        if img.mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return _rgb_array(arr)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(np.asarray(img.convert("RGBA")))
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img)


def load_image(source) -> np.ndarray:
    """A path, PIL image, numpy array ([H, W], [H, W, 3|4], any dtype) or tensor ([3, H, W] or [H, W, 3]) ->
    RGB uint8 numpy array [H, W, 3]. Unreadable files raise :class:`ImageError` (one-line message)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                img.load()  # decode now: truncated or corrupt files fail here
                rgb = pil_to_rgb(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
    elif isinstance(source, Image.Image):
        rgb = pil_to_rgb(source)
    elif isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        rgb = _rgb_array(t.numpy())
    elif isinstance(source, np.ndarray):
        rgb = _rgb_array(source)
    else:
        raise TypeError(f"expected an image path, PIL image, numpy array or tensor, got {type(source).__name__}")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ImageError("empty image")
    return rgb


def collect_images(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    """Files as given, and the image files (by extension) directly inside folders, sorted. ImageError for a
    missing path or a folder without images."""
    out = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower()[1:] in IMAGE_EXTENSIONS)
            if not found:
                raise ImageError(f"no images in folder {path} (looked for .{', .'.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise ImageError(f"image not found: {path}")
    return out


def output_stems(paths: Sequence[Path]) -> List[str]:
    """File-name stems for outputs, unique even when inputs share a name (a/x.jpg, b/x.jpg, x.png)."""
    stems, used = [], set()
    for path in paths:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def to_uint8_image(image) -> torch.Tensor:
    """PIL image, uint8 numpy array or uint8 tensor -> uint8 tensor [3, H, W].

    Numpy arrays are read as [H, W, 3] (``np.asarray(pil_image)``) and tensors as [3, H, W]
    (``torchvision.io.read_image``); the other layout is accepted when the shape is unambiguous. Grey images
    are repeated to 3 channels, alpha is dropped. Float images are refused: their range (0..1 or 0..255) would
    be a guess.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got {image.dtype}")
        if not image.flags.writeable:  # np.asarray(PIL image) is read-only; torch wants writable memory
            image = image.copy()
        image = torch.from_numpy(image)
        if image.ndim == 3 and (image.shape[-1] in (3, 4) or image.shape[0] not in (1, 3, 4)):
            # HWC -> CHW as a view: the float copy made for resizing keeps this (channels-last) layout, in
            # which bilinear resizing of 3-channel images is fastest
            image = image.permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] not in (1, 3, 4) and image.shape[-1] in (1, 3, 4):
            image = image.permute(2, 0, 1)  # HWC -> CHW
    else:
        raise TypeError(f"expected a PIL image, numpy array or tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an image [3, H, W], got shape {tuple(image.shape)}")
    if image.shape[0] == 1:
        return image.expand(3, -1, -1)
    return image[:3]
