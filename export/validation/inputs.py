"""The images a validation runs on, and their labels when there are any.

* Images: every image file under ``--images DIR`` (recursive, sorted by relative path; the
  calibration side's :func:`discover_images`, so both mean the same thing by "an image folder").
* Labels, from class sub-folders: when *every* image sits in a first-level sub-folder named as
  one of the model's labels, the folder is its label. When no folder is a label name the images
  are unlabelled (the report says so); when some are and some are not, that is almost surely a
  mistake and is refused (exit 2), naming the folders that are not labels.
* Labels, from ``--labels FILE``: CSV rows ``path,label`` (an optional ``path,label`` header);
  ``path`` relative to the images folder (``./`` and ``//`` allowed) or absolute inside it, ``label``
  a label name or a class index. A listed file that does not exist, an unknown label, a path listed
  twice with different labels or a file that labels nothing is refused with the line number. Images
  the file does not list are compared with the reference but count for no accuracy.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vitmsn.calibration.content import SampleDigests
from vitmsn.calibration.images import IMAGE_EXTENSIONS, discover_images
from vitmsn.core.errors import InputError
from vitmsn.runtime.manifest import CalibrationRecord
from vitmsn.runtime.images.preprocess import PreprocessConfig


@dataclass
class ImageSet:
    root: Path
    files: list[Path]
    labels: np.ndarray  # class index per file, -1 when unknown
    label_source: str | None  # "folders", "labels-file" or None
    note: str = ""
    # images left out as calibration images (without_calibration_images); None: not known (no digests recorded)
    excluded_in_sample: int | None = 0

    def relative(self, i: int) -> str:
        return self.files[i].relative_to(self.root).as_posix()

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "count": len(self.files), "label_source": self.label_source,
                "labelled": int((self.labels >= 0).sum()), "note": self.note,
                "in_sample": None if self.excluded_in_sample is None else False,
                "excluded_in_sample": self.excluded_in_sample or 0}


def without_calibration_images(images: ImageSet, calibration: CalibrationRecord | None,
                               pre: PreprocessConfig) -> ImageSet:
    """``images`` less those of the calibration sample, matched by content (:mod:`vitmsn.calibration.content`)
    with the digests the manifest recorded, and counted. A manifest written before digests were recorded: kept
    whole, ``excluded_in_sample`` None (not known)."""
    if calibration is None:
        return images
    sample = SampleDigests.from_record(calibration)
    if sample is None:
        return replace(images, excluded_in_sample=None)
    kept = sample.outside(images.files, pre)
    excluded = len(images.files) - len(kept)
    if not kept:
        raise InputError(f"--images {images.root}: all {excluded} images are in the calibration sample (same bytes or "
                         "same decoded pixels); validate on images the model was not calibrated on")
    note = images.note + (f"; {excluded} left out as they are in the calibration sample" if excluded else "")
    return ImageSet(images.root, [images.files[i] for i in kept], images.labels[kept], images.label_source, note,
                    excluded)


def _from_folders(root: Path, files: list[Path], labels: dict[int, str]) -> tuple[np.ndarray, str | None, str]:
    index = {name: i for i, name in labels.items()}
    folders = {f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1}
    top_level = [f for f in files if len(f.relative_to(root).parts) == 1]
    matching = folders & set(index)
    unknown = -np.ones(len(files), dtype=np.int64)
    if not labels:
        return unknown, None, "the model has no labels (feature extraction): no accuracy"
    if not matching:
        return unknown, None, ("no sub-folder is named as one of the model's labels: no accuracy "
                               "(use class sub-folders named as the labels, or --labels FILE)")
    if top_level or folders - matching:
        others = sorted(folders - matching)[:8] + ([f"{len(top_level)} image(s) at the top level"] if top_level else [])
        raise InputError(f"--images {root}: {len(matching)} sub-folder(s) are named as the model's labels but these are "
                         f"not: {', '.join(others)}; put every image in a folder named as its label, or pass --labels FILE")
    out = np.array([index[f.relative_to(root).parts[0]] for f in files], dtype=np.int64)
    return out, "folders", f"labels from {len(matching)} class sub-folders"



def csv_text(path: Path, source: str, limit: int, why: str = "") -> str:
    """The UTF-8 text of a ``path,label`` CSV of at most ``limit`` bytes (``/dev/zero`` or a stray dump is refused)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise InputError(f"{source}: more than {limit} bytes{' ' + why if why else ''}; expected one "
                             "'path,label' line per image")
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot be read ({exc}); save it as UTF-8 CSV") from exc


def path_label_rows(text: str, source: str) -> Iterator[tuple[int, list[str]]]:
    """The data rows of a ``path,label`` CSV with their line numbers: blank lines, ``#`` comments and a leading
    ``path,label`` header skipped; malformed CSV is an :class:`InputError` naming ``source`` and the line."""
    reader = csv.reader(io.StringIO(text, newline=""))  # CSV's own line ends: CRLF, newlines inside quotes
    first = True
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{source}: line {reader.line_num}: {exc}") from exc
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        header = first and [c.strip().lower() for c in row[:2]] == ["path", "label"]
        first = False
        if not header:
            yield reader.line_num, row

def _from_csv(root: Path, files: list[Path], labels: dict[int, str], labels_file: Path) -> tuple[np.ndarray, str, str]:
    if not labels:
        raise InputError(f"--labels {labels_file}: the model has no labels (feature extraction); drop --labels")
    index = {name: i for i, name in labels.items()}
    position = {f.relative_to(root).as_posix(): i for i, f in enumerate(files)}
    out = -np.ones(len(files), dtype=np.int64)
    limit = (1 << 20) + 4096 * len(files)  # a line per image, paths up to 4 KiB: /dev/zero or a stray dump is refused
    text = csv_text(labels_file, f"--labels {labels_file}", limit, f"for {len(files)} image(s)")
    seen: dict[str, tuple[str, int]] = {}
    for line, row in path_label_rows(text, f"--labels {labels_file}"):
        if len(row) != 2:
            raise InputError(f"--labels {labels_file}: line {line}: expected 'path,label', got {len(row)} field(s)")
        given, label = row[0].strip(), row[1].strip()
        path = (os.path.relpath(os.path.abspath(given), os.path.abspath(root)) if os.path.isabs(given)
                else posixpath.normpath(given)).replace(os.sep, "/")
        if os.path.isabs(given) and path.split("/")[0] == "..":
            raise InputError(f"--labels {labels_file}: line {line}: {given} is not inside --images {root}")
        if path not in position:
            raise InputError(f"--labels {labels_file}: line {line}: {given} is not an image under --images {root}")
        if label in index:
            found = index[label]
        elif label.isascii() and label.isdigit() and int(label) in labels:
            found = int(label)
        else:
            raise InputError(f"--labels {labels_file}: line {line}: label {label!r} is not one of the model's labels "
                             f"({', '.join(list(index)[:10])}{', ...' if len(index) > 10 else ''}) nor a class index")
        if path in seen and out[position[path]] != found:
            raise InputError(f"--labels {labels_file}: line {line}: {given} is labelled {label!r} here but "
                             f"{seen[path][0]!r} on line {seen[path][1]}; list each image once")
        seen.setdefault(path, (label, line))
        out[position[path]] = found
    if not seen:
        raise InputError(f"--labels {labels_file}: no 'path,label' rows, so no image would count for accuracy; "
                         "list the images, or drop --labels")
    missing = int((out < 0).sum())
    note = f"labels from {labels_file.name}" + (f"; {missing} image(s) not listed there count for no accuracy" if missing else "")
    return out, "labels-file", note


def image_set(images_dir: str | Path, labels: dict[int, str], labels_file: str | Path | None = None) -> ImageSet:
    root = Path(images_dir)
    if not root.is_dir():
        raise InputError(f"--images {root}: no such directory")
    files = discover_images(root)
    if not files:
        raise InputError(f"--images {root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    source: str | None
    if labels_file is not None:
        lf = Path(labels_file)
        if not lf.is_file():
            raise InputError(f"--labels {lf}: {'not a regular file' if lf.exists() else 'no such file'}")
        found, source, note = _from_csv(root, files, labels, lf)
    else:
        found, source, note = _from_folders(root, files, labels)
    return ImageSet(root, files, found, source, note)
