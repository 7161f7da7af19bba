"""Image preprocessing driven only by the manifest's ``preprocess`` block (numpy + Pillow).

This is the one implementation used by calibration, validation, benchmarks and serving alike.
It reproduces transformers' ``ViTImageProcessor`` (PIL backend) configured from
the same ``preprocessor_config.json``, to within 1e-5 on the same RGB image (in fact bit-exactly):

1. read at most ``max_file_bytes`` from a path or file object (a pipe, ``/dev/zero`` or a sparse
   5 GB file ends in an ImageError, in bounded memory); decode (a fixed list of raster formats, never
   EPS/PDF), refusing before decoding any image over ``max_pixels`` or whose decoded raster
   (width x height x bands x bytes per sample, from the header) is over ``max_decode_bytes``;
   apply the EXIF orientation;
2. convert to RGB as ``transformers.pipeline("image-classification")`` does (its ``load_image``
   is Pillow's ``convert("RGB")``): transparency is dropped, not blended (``alpha_background``
   None, the manifest's ``"alpha": "drop"``). For models trained on images composited onto a
   colour, ``alpha_background=(R, G, B)`` blends RGBA, LA and P-with-transparency images onto it
   (``"alpha": "composite"``; onto white is transformers' ``convert_to_rgb``). Manifests written
   before the choice was recorded composite onto white, as they were validated. 16-bit grey is
   scaled to 8 bits (not clipped, which would turn most of it white);
3. ``PIL.Image.resize((width, height), resample, reducing_gap=None)`` on the uint8 image;
4. ``(float32(float64(uint8) * rescale_factor) - mean) / std`` per channel, done with a 256-entry
   lookup table per channel: bit-identical to the float arithmetic and about 10x faster;
5. HWC -> CHW float32.

``draft=True`` (off by default, never recorded in the manifest) trades exactness for speed: JPEGs
are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (still at least the target size) and other images
are pre-reduced with ``reducing_gap=3``. It no longer matches transformers to 1e-5 (measure with
``python benchmarks/runtime_e2e.py --preprocess-only``).
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitmsn.errors import InputError

from .image_read import (DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_FILE_BYTES, ImageError, ReadLimits, decoded_bytes,
                         read_capped, read_path)

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image, np.ndarray]

# transformers' ViTImageProcessor defaults, used (with a warning at export) when a checkpoint has
# no preprocessor_config.json.
DEFAULT_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
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


@dataclass(frozen=True)
class PreprocessConfig:
    height: int
    width: int
    resample: int = 2
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = False
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    # None: alpha dropped (convert("RGB"), transformers.pipeline); (R, G, B): composited onto that colour. Not a
    # checkpoint property (an export option), so it takes no part in comparing with the checkpoint's config.
    alpha_background: tuple[int, int, int] | None = field(default=None, compare=False)
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_NAMES:
            raise InputError(f"preprocess: resample {self.resample!r} is not a PIL filter code 0-5")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise InputError("preprocess: image_mean and image_std need 3 values (RGB)")
        if any(s == 0 for s in self.image_std):
            raise InputError("preprocess: image_std must not contain 0")
        if self.height <= 0 or self.width <= 0:
            raise InputError(f"preprocess: size {self.height}x{self.width} must be positive")
        if self.max_decode_bytes < 1 or self.max_file_bytes < 1 or self.max_pixels < 1:
            raise InputError("preprocess: max_pixels, max_decode_bytes and max_file_bytes must be positive")
        if self.alpha_background is not None:
            bg = tuple(self.alpha_background)
            if len(bg) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in bg):
                raise InputError(f"preprocess: alpha background {self.alpha_background!r} must be 3 integers 0-255 (R,G,B)")
            object.__setattr__(self, "alpha_background", bg)
        object.__setattr__(self, "_lut", self._build_lut())

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_preprocessor_config(cls, cfg: dict[str, Any], source: str = "preprocessor_config.json") -> "PreprocessConfig":
        """Parse a Hugging Face preprocessor_config.json (ViTImageProcessor keys)."""
        if cfg.get("do_center_crop"):
            raise InputError(f"{source}: do_center_crop is not supported (ViTMSN processors resize only)")
        size = cfg.get("size", DEFAULT_PREPROCESSOR_CONFIG["size"])
        if isinstance(size, int):
            height = width = size
        elif isinstance(size, dict) and "height" in size and "width" in size:
            height, width = int(size["height"]), int(size["width"])
        else:
            raise InputError(f"{source}: size {size!r} is not supported; expected {{'height': H, 'width': W}} or an int")

        def _triple(key: str) -> tuple[float, ...]:
            value = cfg.get(key, DEFAULT_PREPROCESSOR_CONFIG[key])
            if isinstance(value, (int, float)):
                value = [value] * 3
            return tuple(float(v) for v in value)

        resample = cfg.get("resample", 2)
        if isinstance(resample, str):
            names = {v: k for k, v in RESAMPLE_NAMES.items()}
            if resample.lower() not in names:
                raise InputError(f"{source}: resample {resample!r} is not one of {sorted(names)}")
            resample = names[resample.lower()]
        return cls(
            height=height,
            width=width,
            resample=int(resample),
            do_resize=bool(cfg.get("do_resize", True)),
            do_rescale=bool(cfg.get("do_rescale", True)),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            image_mean=_triple("image_mean"),
            image_std=_triple("image_std"),
        )

    @classmethod
    def from_manifest(cls, block: Any, **runtime: Any) -> "PreprocessConfig":
        """The manifest's ``preprocess`` block (a :class:`~.manifest_entries.PreprocessSpec`, already validated,
        or its JSON form); ``runtime`` sets ``max_pixels``, ``max_decode_bytes``, ``max_file_bytes`` or ``draft``."""
        if hasattr(block, "to_json"):
            block = block.to_json()
        try:
            return cls(
                height=int(block["size"]["height"]),
                width=int(block["size"]["width"]),
                resample=int(block["resample"]),
                do_resize=bool(block["do_resize"]),
                do_rescale=bool(block["do_rescale"]),
                rescale_factor=float(block["rescale_factor"]),
                do_normalize=bool(block["do_normalize"]),
                image_mean=tuple(float(v) for v in block["image_mean"]),
                image_std=tuple(float(v) for v in block["image_std"]),
                alpha_background=_alpha_from_manifest(block),
                **runtime,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"manifest.json: preprocess block is incomplete or malformed ({exc!r}); re-export") from exc

    def to_manifest(self) -> dict[str, Any]:
        return {
            "do_resize": self.do_resize,
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "resample_name": RESAMPLE_NAMES[self.resample],
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            **self.alpha_manifest(),
            "convert_rgb": ("alpha dropped (Pillow convert('RGB'), as transformers.pipeline loads images)"
                            if self.alpha_background is None else
                            f"alpha composited onto RGB {list(self.alpha_background)}") + "; 16-bit grey scaled to 8 bits",
            "exif_orientation": True,
            "layout": "NCHW",
        }

    def alpha_manifest(self) -> dict[str, Any]:
        """The manifest's record of the alpha choice: ``{"alpha": "drop"}`` or composite with its background."""
        if self.alpha_background is None:
            return {"alpha": "drop"}
        return {"alpha": "composite", "alpha_background": list(self.alpha_background)}

    # ---- the numeric part ----------------------------------------------------------------
    def _build_lut(self) -> np.ndarray:
        values = np.arange(256, dtype=np.uint8)
        lut = np.empty((3, 256), dtype=np.float32)
        for c in range(3):
            x = values.astype(np.float32)
            if self.do_rescale:  # transformers: float64 multiply, then down to float32
                x = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
            if self.do_normalize:  # transformers: float32 (x - mean) / std
                x = (x - np.float32(self.image_mean[c])) / np.float32(self.image_std[c])
            lut[c] = x
        return lut

    def resize(self, image: Image.Image) -> Image.Image:
        if not self.do_resize or image.size == (self.width, self.height):
            return image
        gap = 3.0 if self.draft else None
        return image.resize((self.width, self.height), resample=self.resample, reducing_gap=gap)

    def normalize_into(self, rgb: np.ndarray, out: np.ndarray) -> np.ndarray:
        """uint8 HWC RGB -> float32 CHW written into ``out`` (shape [3, H, W])."""
        for c in range(3):
            np.take(self._lut[c], rgb[:, :, c], out=out[c])
        return out

    def pixels(self, image: ImageInput) -> np.ndarray:
        """One image -> the resized uint8 HxWx3 RGB array (before rescale/normalize)."""
        im = to_rgb(image, max_pixels=self.max_pixels, draft_size=(self.width, self.height) if self.draft else None,
                    keep_grey=True, limits=ReadLimits(self.max_file_bytes, self.max_decode_bytes),
                    alpha_background=self.alpha_background)
        im = self.resize(im)
        if im.mode == "L":  # resizing the one grey band, then repeating it, is exact and 3x cheaper
            im = im.convert("RGB")
        rgb = np.asarray(im)
        if rgb.shape[:2] != (self.height, self.width):
            raise ImageError(f"{describe(image)}: is {rgb.shape[1]}x{rgb.shape[0]} but the model needs "
                             f"{self.width}x{self.height} and do_resize is off in the manifest")
        return rgb

    def __call__(self, image: ImageInput, out: np.ndarray | None = None) -> np.ndarray:
        """One image -> float32 [3, H, W] (written into ``out`` when given)."""
        if out is None:
            out = np.empty((3, self.height, self.width), dtype=np.float32)
        return self.normalize_into(self.pixels(image), out)

    def batch(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> float32 [N, 3, H, W]. Raises ImageError naming the first bad image."""
        out = np.empty((len(images), 3, self.height, self.width), dtype=np.float32)
        for i, image in enumerate(images):
            self(image, out[i])
        return out


def _alpha_from_manifest(block: dict[str, Any]) -> tuple[int, int, int] | None:
    alpha = block.get("alpha")
    if alpha == "drop":
        return None
    if alpha is None:  # written before the choice was recorded: composited onto white, as validated then
        return (255, 255, 255)
    if alpha == "composite":
        return tuple(int(v) for v in block["alpha_background"])  # type: ignore[return-value]
    raise ValueError(f"alpha {alpha!r} is not 'drop' or 'composite'")


def parse_background(text: str) -> tuple[int, int, int]:
    """``"255,255,255"`` -> (255, 255, 255); ValueError naming what is wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r}: expected R,G,B integers 0-255, e.g. 255,255,255") from None
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"{text!r}: expected R,G,B integers 0-255, e.g. 255,255,255")
    return values  # type: ignore[return-value]


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
