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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from vitmsn.core.errors import InputError

from .decode import DEFAULT_MAX_PIXELS, ImageInput, describe, to_rgb  # noqa: F401  (this module's API too)
from .read import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_FILE_BYTES, ImageError, ReadLimits  # noqa: F401

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


def preprocess_files(pre: PreprocessConfig, files: Sequence[Path], root: Path | None = None, *,
                     limit: int | None = None, on_read: Callable[[], Any] | None = None,
                     ) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Preprocess ``files`` in order, skipping (and listing) the unreadable ones.

    Returns float32 [K, 3, H, W] for the K images read, their indices in ``files``, and the skipped
    ones as ``{"image": path relative to root (as given without root), "reason": ...}``. With ``limit``
    it stops after that many readable images; ``on_read`` is called after each image read (a progress bar).
    """
    n = len(files) if limit is None else min(limit, len(files))
    out = np.empty((n, 3, pre.height, pre.width), dtype=np.float32)
    ok: list[int] = []
    skipped: list[dict[str, str]] = []
    for i, f in enumerate(files):
        if len(ok) == n:
            break
        try:
            pre(f, out[len(ok)])
        except (ImageError, OSError, ValueError) as exc:  # ImageError names the file; keep the reason
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"
            skipped.append({"image": (f.relative_to(root) if root is not None else f).as_posix(), "reason": reason})
            continue
        ok.append(i)
        if on_read is not None:
            on_read()
    return out[: len(ok)], ok, skipped


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
