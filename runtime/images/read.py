"""Reading one encoded image with bounded cost: bytes read, and bytes its decoded raster would take.

Every source (a path, a pipe or device such as ``/dev/stdin``, a file object, bytes) is read with
a cap, so ``/dev/zero`` or a sparse 5 GB file given as an image ends in an :class:`ImageError`
in bounded memory; a regular file over the cap is refused from its size without reading it.
The decode budget is checked from the image header before any pixel is decoded
(see :func:`vitmsn.runtime.images.preprocess.to_rgb`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from vitmsn.core.errors import InputError

if TYPE_CHECKING:  # Pillow is imported by the decoder, not here (the CLI reads the defaults at --help)
    from PIL import Image

# Refuse images whose decoded raster would exceed this many bytes (width x height x bands x bytes
# per sample, read from the header): a 124 KB 8000x8000 16-bit PNG would decode to 128 MB (and the
# 16-bit conversion used to cost ~1.2 GB). 96 MiB admits 8-bit RGB up to 33 megapixels (8192x4096).
DEFAULT_MAX_DECODE_BYTES = 96 * 1024 * 1024
# Read at most this many bytes of one encoded image (file, pipe, stdin, file object).
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
# Bytes per sample of Pillow's modes (bands come from ``getbands()``); anything else counts 4.
_SAMPLE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 1, "PA": 1, "La": 1, "RGB": 1, "RGBA": 1, "RGBa": 1, "RGBX": 1,
                 "CMYK": 1, "YCbCr": 1, "LAB": 1, "HSV": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
                 "I": 4, "F": 4}


class ImageError(InputError):
    """One image could not be read or converted; the message names it and says why."""


@dataclass(frozen=True)
class ReadLimits:
    """How much one encoded image may cost: bytes read, and bytes of its decoded raster."""

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES


def read_capped(stream: BinaryIO, name: str, limit: int) -> bytes:
    """At most ``limit`` bytes of ``stream``; ImageError (nothing more read) when it holds more."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise ImageError(f"{name}: refused, more than {limit} bytes (the limit for one encoded image); "
                         "raise it with --max-image-bytes (Python: max_file_bytes)")
    return b"".join(chunks)


def read_path(path: Path, name: str, limit: int) -> bytes:
    if path.is_dir():
        raise ImageError(f"{name}: is a directory, not an image file")
    if not path.exists():
        raise ImageError(f"{name}: no such file")
    if path.is_file() and path.stat().st_size > limit:  # a regular file: refused without reading it
        raise ImageError(f"{name}: refused, {path.stat().st_size} bytes is over the {limit}-byte limit for one "
                         "encoded image; raise it with --max-image-bytes (Python: max_file_bytes)")
    try:
        with open(path, "rb") as fh:  # also pipes and devices (/dev/stdin, <(...)), read up to the limit
            return read_capped(fh, name, limit)
    except OSError as exc:
        raise ImageError(f"{name}: cannot be read ({exc.strerror or exc})") from None


def decoded_bytes(im: "Image.Image") -> int:
    """Bytes of ``im``'s decoded raster, from its header: width x height x bands x bytes per sample."""
    return im.width * im.height * len(im.getbands()) * _SAMPLE_BYTES.get(im.mode, 4)
