"""Image preprocessing driven only by the manifest's ``preprocess`` block (numpy + Pillow).

This is the one implementation used by calibration, validation, benchmarks and serving alike
(STYLE.md #12). It reproduces transformers' ``ViTImageProcessor`` (PIL backend) configured from
the same ``preprocessor_config.json``:

1. decode, apply the EXIF orientation, convert to RGB (transparency is composited onto white,
   as transformers' ``convert_to_rgb`` does; 16-bit grey is scaled to 8 bits, not clipped);
2. ``PIL.Image.resize((width, height), resample, reducing_gap=None)`` on the uint8 image;
3. ``(float32(uint8 * rescale_factor) - mean) / std`` per channel, done with a 256-entry
   lookup table per channel, which is bit-identical to the float arithmetic and much faster;
4. HWC -> CHW float32.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitmsn.errors import InputError

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


class ImageError(InputError):
    """One image could not be read or converted; the message names it and says why."""


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
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_NAMES:
            raise InputError(f"preprocess: resample {self.resample!r} is not a PIL filter code 0-5")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise InputError("preprocess: image_mean and image_std need 3 values (RGB)")
        if any(s == 0 for s in self.image_std):
            raise InputError("preprocess: image_std must not contain 0")
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
    def from_manifest(cls, block: dict[str, Any]) -> "PreprocessConfig":
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
            "convert_rgb": "alpha composited onto white; 16-bit grey scaled to 8 bits",
            "exif_orientation": True,
            "layout": "NCHW",
        }

    # ---- the numeric part ----------------------------------------------------------------
    def _build_lut(self) -> np.ndarray:
        values = np.arange(256, dtype=np.uint8)
        lut = np.empty((3, 256), dtype=np.float32)
        for c in range(3):
            x = values.astype(np.float32)
            if self.do_rescale:
                x = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
            if self.do_normalize:
                x = (x - np.float32(self.image_mean[c])) / np.float32(self.image_std[c])
            lut[c] = x
        return lut

    def resize(self, image: Image.Image) -> Image.Image:
        if not self.do_resize or image.size == (self.width, self.height):
            return image
        return image.resize((self.width, self.height), resample=self.resample, reducing_gap=None)

    def normalize_into(self, rgb: np.ndarray, out: np.ndarray) -> np.ndarray:
        """uint8 HWC RGB -> float32 CHW written into ``out`` (shape [3, H, W])."""
        for c in range(3):
            np.take(self._lut[c], rgb[:, :, c], out=out[c])
        return out

    def __call__(self, image: ImageInput) -> np.ndarray:
        """One image -> float32 [3, H, W]."""
        rgb = np.asarray(self.resize(to_rgb(image, max_pixels=self.max_pixels)))
        return self.normalize_into(rgb, np.empty((3, self.height, self.width), dtype=np.float32))

    def batch(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images -> float32 [N, 3, H, W]. Raises ImageError naming the first bad image."""
        out = np.empty((len(images), 3, self.height, self.width), dtype=np.float32)
        for i, image in enumerate(images):
            rgb = np.asarray(self.resize(to_rgb(image, max_pixels=self.max_pixels)))
            self.normalize_into(rgb, out[i])
        return out


def describe(image: ImageInput) -> str:
    """How an input is named in messages and in ``predict --json``'s ``input`` field."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    if isinstance(image, Image.Image):
        return f"<PIL {image.mode} {image.width}x{image.height}>"
    if isinstance(image, np.ndarray):
        return f"<array {image.dtype} {tuple(image.shape)}>"
    return f"<{type(image).__name__}>"


def _open(image: ImageInput, name: str, max_pixels: int) -> Image.Image:
    try:
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise ImageError(f"{name}: no such file")
            if path.stat().st_size == 0:
                raise ImageError(f"{name}: empty file (0 bytes)")
            im = Image.open(path)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            if len(image) == 0:
                raise ImageError(f"{name}: empty input (0 bytes)")
            im = Image.open(io.BytesIO(bytes(image)))
        elif hasattr(image, "read"):
            im = Image.open(image)  # type: ignore[arg-type]
        else:
            raise ImageError(f"{name}: unsupported input type {type(image).__name__}; pass a path, bytes, a file object, a PIL image or a uint8 HxWx3 array")
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
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: image data is truncated or corrupt ({exc})") from exc
    return im


def _pil_to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.uint32 if im.mode == "I" else np.uint16).astype(np.uint32)
        top = 65535 if im.mode != "I" or arr.max() > 255 else 255
        grey = ((arr * 255 + top // 2) // top).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        grey = np.clip(np.rint(arr if arr.max() > 1.0 else arr * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def to_rgb(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any supported input -> an RGB PIL image with its EXIF orientation applied."""
    name = describe(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageError(f"{name}: arrays must be uint8 HxWx3 RGB (got dtype {image.dtype})")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) == 0:
            raise ImageError(f"{name}: arrays must be uint8 HxWx3 RGB (got shape {tuple(image.shape)})")
        return _pil_to_rgb(Image.fromarray(np.ascontiguousarray(image), "RGBA" if image.shape[2] == 4 else "RGB"))
    if isinstance(image, Image.Image):
        im = image
    else:
        im = _open(image, name, max_pixels)
    try:
        im = ImageOps.exif_transpose(im) or im
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        pass  # a corrupt EXIF block: keep the stored orientation rather than lose the image
    return _pil_to_rgb(im)

