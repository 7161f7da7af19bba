"""Fixtures and helpers for the runtime tests (preprocessing, runners, Predictor, `vitmsn predict`).

Test modules import fixtures by name (``from runtime_fixtures import rt_cls``); ``conftest.py``
stays the lead's. Everything here is real: transformers checkpoints saved with
``save_pretrained``, exported by the real pipeline, a real TensorRT-RTX engine built ahead of time
on the CPU, and real image files in every format the runtime accepts.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from checkpoints import save_transformers

# Non-square patch grid input, bicubic resize and ImageNet statistics: every preprocess knob differs
# from the ViTImageProcessor defaults, so a knob read wrong cannot hide.
RT_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 image_size=48, patch_size=8, num_labels=6)
RT_PREPROCESSOR = {"do_resize": True, "size": {"height": 48, "width": 48}, "resample": 3, "do_rescale": True,
                   "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
                   "image_std": [0.229, 0.224, 0.225], "image_processor_type": "ViTImageProcessor"}


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    artifacts: Path


def _export(checkpoint: Path, out: Path) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export
    from vitmsn.export.fp32.spec import BatchRange

    run_export(ExportOptions(model=str(checkpoint), out=out, engine="skip", batch=BatchRange(1, 4, 8)))
    return out


@pytest.fixture(scope="session")
def rt_cls(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A tiny random classifier (6 labels, 48x48, bicubic) saved by transformers, and its FP32 export.

    The classifier weights are scaled up so the softmax is far from uniform and label order is
    decided by clear margins, not by 1e-7 ties.
    """
    import torch

    root = tmp_path_factory.mktemp("rt_cls")
    model = save_transformers(root / "checkpoint", preprocessor=RT_PREPROCESSOR, **RT_CONFIG)
    with torch.no_grad():
        model.classifier.weight.mul_(25.0)
    model.save_pretrained(root / "checkpoint")
    return Exported(root / "checkpoint", _export(root / "checkpoint", root / "artifacts"))


@pytest.fixture(scope="session")
def rt_feat(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A tiny random feature-extraction model (no classifier) and its FP32 export."""
    root = tmp_path_factory.mktemp("rt_feat")
    save_transformers(root / "checkpoint", classifier=False, preprocessor=RT_PREPROCESSOR, **RT_CONFIG)
    return Exported(root / "checkpoint", _export(root / "checkpoint", root / "artifacts"))


@pytest.fixture(scope="session")
def rt_engine(rt_cls: Exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rt_cls's checkpoint exported again by the product with a real TensorRT-RTX engine (built ahead of
    time, no GPU needed): the engine file and its manifest entry are what vitmsn-export writes."""
    from vitmsn.export.engines.builder import EngineOptions
    from vitmsn.export.fp32.spec import BatchRange
    from vitmsn.export.pipeline import ExportOptions, run_export

    import tensorrt_rtx

    from vitmsn.runtime.backends import device

    # this machine's GPU when TensorRT-RTX supports it (so the gpu tests can run the engine), else SM 8.6
    gpu = device.gpu(0)
    here = gpu.compute_capability.replace(".", "") if gpu else None
    target = f"sm{here}" if here and hasattr(tensorrt_rtx.ComputeCapability, f"SM{here}") else "sm86"
    out = tmp_path_factory.mktemp("rt_engine") / "artifacts"
    batch = BatchRange(1, 4, 8)
    run_export(ExportOptions(model=str(rt_cls.checkpoint), out=out, engine="require", target="tensorrt-rtx", batch=batch,
                             engine_options=EngineOptions(target="tensorrt-rtx", batch=batch, aot_targets=(target,),
                                                          progress=False)))
    return out


# ---- images -----------------------------------------------------------------------------------
def photo(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth colour fields, mid-frequency texture and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width, 3), 128.0, np.float32)
    for c in range(3):
        for _ in range(5):
            fx, fy, phase = rng.uniform(0.002, 0.03), rng.uniform(0.002, 0.03), rng.uniform(0, 6.28)
            img[..., c] += rng.uniform(15, 45) * np.sin(fx * x + fy * y + phase)
    texture = rng.normal(0, 40, (height // 4 + 1, width // 4 + 1, 3)) + 128
    texture_im = Image.fromarray(texture.clip(0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    img += np.asarray(texture_im, np.float32) - 128 + rng.normal(0, 5, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def _alpha_ramp(size: tuple[int, int]) -> Image.Image:
    w, h = size
    return Image.fromarray(np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8), "L")


def write_photo_formats(out: Path, seed: int = 0, size: tuple[int, int] = (320, 240)) -> dict[str, Path]:
    """One real file per format and mode the runtime must read, name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    base = photo(*size, seed=seed)
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, fmt: str, **kw: object) -> None:
        files[name] = out / name
        image.save(files[name], format=fmt, **kw)

    save("photo.jpg", base, "JPEG", quality=90)
    save("photo.png", base, "PNG")
    save("photo.webp", base, "WEBP", quality=85)
    save("photo.bmp", base, "BMP")
    save("photo.tiff", base, "TIFF")
    save("grey.jpg", base.convert("L"), "JPEG", quality=90)
    save("grey.png", base.convert("L"), "PNG")
    rgba = base.copy()
    rgba.putalpha(_alpha_ramp(base.size))
    save("rgba.png", rgba, "PNG")
    save("rgba.webp", rgba, "WEBP", lossless=True)
    la = base.convert("L")
    la.putalpha(_alpha_ramp(base.size))
    save("la.png", la, "PNG")
    save("palette.png", base.quantize(64), "PNG")
    save("palette_transparent.png", base.quantize(64), "PNG", transparency=0)
    save("palette.gif", base.quantize(64), "GIF")
    save("cmyk.jpg", base.convert("CMYK"), "JPEG", quality=90)
    grey16 = (np.asarray(base.convert("L"), np.uint32) * 257 + np.random.default_rng(seed).integers(0, 257, base.size[::-1]))
    save("grey16.png", Image.fromarray(grey16.astype(np.uint16)), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; shown rotated 90 degrees clockwise
    save("exif_rotated.jpg", base, "JPEG", quality=90, exif=exif.tobytes())
    return files


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def write_bad_files(out: Path) -> dict[str, Path]:
    """Inputs that must each give a clear per-image error: name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    photo(160, 120, seed=7).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    files = {"empty.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) // 2], "text.jpg": b"this is not an image\n" * 10,
             "bomb.png": png_claiming_size(200_000, 200_000),
             "eps.jpg": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n"}
    paths = {}
    for name, data in files.items():
        paths[name] = out / name
        paths[name].write_bytes(data)
    return paths
