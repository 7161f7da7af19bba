"""Any image input -> an RGB (or 8-bit grey) PIL image, upright, within the read and decode limits.

Paths, bytes, file objects, PIL images and uint8 arrays; a fixed list of raster formats (never
EPS/PDF); images over ``max_pixels`` or whose decoded raster (from the header) is over the decode
budget are refused before decoding; EXIF orientation applied; transparency dropped or composited
onto a colour (see :mod:`.preprocess`).
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .read import ImageError, ReadLimits, decoded_bytes, read_capped, read_path

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

# Refuse images above this many pixels before decoding them (decompression bombs). Pillow's own
# guard only warns up to 2x its limit and is process-global; this check is per call.
DEFAULT_MAX_PIXELS = 64_000_000
# Raster formats Pillow may try. EPS/PS (which would run Ghostscript), PDF, fonts and the like are
# never attempted on untrusted input.
# (MPO, the multi-picture JPEG of many cameras, opens through the JPEG plugin.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "ICO", "JPEG2000", "AVIF")
# EXIF Orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def describe(image: Any) -> str:
    """How an input is named in messages and in ``predict --json``'s ``input`` field."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    if isinstance(image, Image.Image):
        return f"<PIL {image.mode} {image.width}x{image.height}>"
    if isinstance(image, np.ndarray):
        return f"<array {image.dtype} {tuple(image.shape)}>"
    name = getattr(image, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(image).__name__}>"


@functools.lru_cache(maxsize=1)
def _formats() -> tuple[str, ...]:
    """IMAGE_FORMATS that this Pillow build can read (AVIF and JPEG 2000 are optional)."""
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _open(image: Any, name: str, max_pixels: int, draft_size: tuple[int, int] | None,
          limits: ReadLimits = ReadLimits()) -> Image.Image:
    try:
        if isinstance(image, (str, os.PathLike)):
            data = read_path(Path(image), name, limits.max_file_bytes)  # one read; nothing stays open
            if not data:
                raise ImageError(f"{name}: empty file (0 bytes)")
            source: Any = io.BytesIO(data)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            if len(image) == 0:
                raise ImageError(f"{name}: empty input (0 bytes)")
            if len(image) > limits.max_file_bytes:
                raise ImageError(f"{name}: refused, over the {limits.max_file_bytes}-byte limit for one encoded "
                                 "image; raise it with --max-image-bytes (Python: max_file_bytes)")
            source = io.BytesIO(image)
        elif hasattr(image, "read"):
            source = io.BytesIO(read_capped(image, name, limits.max_file_bytes))
        else:
            raise ImageError(f"{name}: unsupported input type {type(image).__name__}; pass a path, bytes, "
                             "a file object, a PIL image or a uint8 HxWx3 array")
        im = Image.open(source, formats=_formats())
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a readable image (unknown format or corrupt header)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused, image is too large to decode safely ({exc})") from exc
    except OSError as exc:
        raise ImageError(f"{name}: cannot be opened ({exc})") from exc
    pixels = im.width * im.height
    if pixels > max_pixels:
        im.close()
        raise ImageError(
            f"{name}: refused, {im.width}x{im.height} = {pixels / 1e6:.0f} megapixels is over the limit of "
            f"{max_pixels / 1e6:.0f} (possible decompression bomb)"
        )
    if pixels == 0:
        im.close()
        raise ImageError(f"{name}: image has no pixels ({im.width}x{im.height})")
    cost = decoded_bytes(im)
    if cost > limits.max_decode_bytes:
        im.close()
        raise ImageError(
            f"{name}: refused, {im.width}x{im.height} {im.mode} ({len(im.getbands())} band(s)) would "
            f"decode to {cost / 2**20:.0f} MiB, over the decode budget of {limits.max_decode_bytes / 2**20:.0f} MiB; "
            "raise it with --max-decode-mb (Python: max_decode_bytes) if you trust this image")
    try:
        if draft_size is not None and im.format in ("JPEG", "MPO"):
            w, h = draft_size
            if _orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            im.draft("RGB" if im.mode == "RGB" else None, (w, h))
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        im.close()
        raise ImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    return im


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value) if value in _ORIENTATION else 1
    except Exception:  # a corrupt EXIF block: keep the stored orientation rather than lose the image
        return 1


def _pil_to_rgb(im: Image.Image, keep_grey: bool = False,
                alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    """Pillow's convert("RGB") (alpha dropped) or, with ``alpha_background``, transparency composited onto it
    (transformers' convert_to_rgb with white); 16-bit/float grey scaled, not clipped."""
    if im.mode == "RGB" or (keep_grey and im.mode == "L"):
        return im
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        arr = np.asarray(im)
        top = 255 if im.mode == "I" and arr.max() <= 255 else 65535
        grey = np.empty(arr.shape, dtype=np.uint8)
        rows = max(1, (1 << 20) // max(1, arr.shape[1]))  # int64 temporaries of ~8 MB, not 8 bytes a pixel at once
        for y in range(0, arr.shape[0], rows):
            block = arr[y:y + rows].astype(np.int64)
            grey[y:y + rows] = (block.clip(0, top) * 255 + top // 2) // top
        return Image.fromarray(grey, "L") if keep_grey else Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        grey = np.clip(np.rint(arr if arr.max() > 1.0 else arr * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L") if keep_grey else Image.fromarray(grey, "L").convert("RGB")
    if alpha_background is not None and ("A" in im.getbands() or im.info.get("transparency") is not None):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*alpha_background, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _array_to_rgb(image: np.ndarray, name: str, alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: arrays must be uint8 HxWx3 RGB (got dtype {image.dtype}); "
                         "pass float tensors to Predictor.infer instead")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2 and min(image.shape) > 0:
        return Image.fromarray(np.ascontiguousarray(image), "L")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) == 0:
        raise ImageError(f"{name}: arrays must be uint8 HxWx3 RGB, HxWx4 RGBA or HxW grey "
                         f"(got shape {tuple(image.shape)})")
    if image.shape[2] == 4 and alpha_background is None:  # as convert("RGB"): alpha dropped
        image = image[..., :3]
    elif image.shape[2] == 4:  # transformers' numpy path: blend onto the colour in float, then round
        alpha = image[..., 3:4] / 255.0
        bg = np.asarray(alpha_background, dtype=np.float64)
        image = np.round(alpha * image[..., :3] + (1.0 - alpha) * bg).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(image), "RGB")


def to_rgb(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, *,
           draft_size: tuple[int, int] | None = None, keep_grey: bool = False,
           limits: ReadLimits = ReadLimits(), alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    """Any supported input -> an RGB PIL image with its EXIF orientation applied.

    ``keep_grey`` returns 8-bit grey images as mode ``L`` (the caller converts after resizing).
    """
    name = describe(image)
    if isinstance(image, np.ndarray):
        im = _array_to_rgb(image, name, alpha_background)
        return im if keep_grey or im.mode == "RGB" else im.convert("RGB")
    if isinstance(image, Image.Image):
        im = image
        if im.width * im.height == 0:
            raise ImageError(f"{name}: image has no pixels")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    else:
        im = _open(image, name, max_pixels, draft_size, limits)
    try:
        orientation = _orientation(im)
        if orientation != 1:
            im = im.transpose(_ORIENTATION[orientation])
        return _pil_to_rgb(im, keep_grey, alpha_background)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: cannot convert mode {im.mode} to RGB ({exc})") from exc
