"""Which gating images are calibration images, by content, whatever their path.

An image is *in sample* when the SHA-256 of its file's bytes, or of its decoded pixels, equals that of an image
of the calibration sample: a byte-identical copy under another name, or a lossless re-encoding of one (a PNG
saved again, a BMP of a PNG). Pixels are those the runtime decodes (EXIF orientation applied, converted to RGB
as the manifest's ``preprocess`` block says), hashed with their size, before any resize. A lossy re-encoding (a
JPEG saved again) is a different image to both digests.

The export records the sample's digests in the manifest's ``calibration`` block (``images_sha256``,
``pixels_sha256``), so ``vitmsn validate`` leaves the same images out later; every gate counts what it left out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from vitmsn.runtime.images.read import ImageError, ReadLimits, read_path
from vitmsn.runtime.manifest import CalibrationRecord
from vitmsn.runtime.images.preprocess import PreprocessConfig, to_rgb


@dataclass(frozen=True)
class ImageDigest:
    file: str  # SHA-256 of the file's bytes
    pixels: str | None  # SHA-256 of its decoded RGB pixels and size; None when it cannot be decoded


def image_digest(path: Path, pre: PreprocessConfig) -> ImageDigest:
    """Both digests of one image file, read within ``pre``'s limits (a file over them gets no digest at all)."""
    limits = ReadLimits(pre.max_file_bytes, pre.max_decode_bytes)
    try:
        data = read_path(path, str(path), limits.max_file_bytes)
    except ImageError:
        return ImageDigest("", None)
    try:
        rgb = to_rgb(data, pre.max_pixels, limits=limits, alpha_background=pre.alpha_background)
    except ImageError:
        return ImageDigest(hashlib.sha256(data).hexdigest(), None)
    pixels = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    pixels.update(rgb.tobytes())
    return ImageDigest(hashlib.sha256(data).hexdigest(), pixels.hexdigest())


@dataclass(frozen=True)
class SampleDigests:
    """The calibration sample by content: the SHA-256 of every image's bytes and of its decoded pixels."""

    files: frozenset[str]
    pixels: frozenset[str]

    @classmethod
    def of_images(cls, paths: Iterable[Path], pre: PreprocessConfig) -> "SampleDigests":
        digests = [image_digest(p, pre) for p in paths]
        return cls(frozenset(d.file for d in digests if d.file), frozenset(d.pixels for d in digests if d.pixels))

    @classmethod
    def from_record(cls, record: CalibrationRecord | None) -> "SampleDigests | None":
        """The digests a manifest recorded; None when it recorded none (no calibration, or an older export)."""
        if record is None or not record.images_sha256:
            return None
        return cls(frozenset(record.images_sha256), frozenset(record.pixels_sha256))

    def to_manifest(self) -> dict[str, list[str]]:
        return {"images_sha256": sorted(self.files), "pixels_sha256": sorted(self.pixels)}

    def holds(self, digest: ImageDigest) -> bool:
        return digest.file in self.files or (digest.pixels is not None and digest.pixels in self.pixels)

    def outside(self, paths: Sequence[Path], pre: PreprocessConfig) -> list[int]:
        """Indices of ``paths`` whose content is not in the sample, in order."""
        return [i for i, p in enumerate(paths) if not self.holds(image_digest(p, pre))]
