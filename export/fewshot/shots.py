"""The labelled shots of ``--fewshot DIR`` or ``--fewshot-labels CSV``: which file is which class (no decoding here).

* ``--fewshot DIR``: one sub-folder per class, the folder name is the label; image files anywhere below a
  class folder belong to it. Files that are not images (by extension, as the calibration side reads folders)
  are ignored and counted; a file directly in DIR is not in any class and is refused.
* ``--fewshot-labels CSV``: rows ``path,label`` (an optional ``path,label`` header, ``#`` comments); a relative
  path is relative to the CSV's folder.

Fewer than 2 classes, or a class folder with no image file, is refused here; a class whose images are all
unreadable is refused once they are decoded (:mod:`.embed`): a class is never silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from vitmsn.calibration.images import IMAGE_EXTENSIONS
from vitmsn.core.errors import InputError
from vitmsn.export.validation.inputs import csv_text, path_label_rows

MAX_CSV_BYTES = 64 << 20  # 100,000 rows of long paths fit many times over


@dataclass
class Shots:
    """Image files and their labels, in a stable order (class by class, then by path)."""

    source: str  # the option and path, for messages: "--fewshot DIR" or "--fewshot-labels CSV"
    files: list[Path]
    labels: list[str]
    ignored: list[Path] = field(default_factory=list)  # files that are not images

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_EXTENSIONS)


def shots_from_folders(root: Path) -> Shots:
    source = f"--fewshot {root}"
    if not root.is_dir():
        raise InputError(f"{source}: no such directory; pass a folder with one sub-folder of images per class")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stray = [p.name for p in entries if p.is_file() and _is_image(p)]
    if stray:
        raise InputError(f"{source}: {len(stray)} image(s) directly in the folder, in no class (e.g. {stray[0]}); "
                         "put each image in a sub-folder named as its label")
    shots = Shots(source, [], [])
    for folder in (p for p in entries if p.is_dir()):
        found: list[Path] = []
        for dirpath, dirnames, names in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(names):
                path = Path(dirpath) / name
                if name.startswith("."):
                    continue
                (found if _is_image(path) else shots.ignored).append(path)
        if not found:
            raise InputError(f"{source}: class folder {folder.name}/ has no image file ({', '.join(IMAGE_EXTENSIONS)}); "
                             "add images or remove the folder (a class is never dropped silently)")
        shots.files += found
        shots.labels += [folder.name] * len(found)
    shots.ignored += [p for p in entries if p.is_file()]
    _at_least_two(shots)
    return shots


def shots_from_csv(csv_path: Path) -> Shots:
    source = f"--fewshot-labels {csv_path}"
    if not csv_path.is_file():
        raise InputError(f"{source}: {'not a regular file' if csv_path.exists() else 'no such file'}")
    text = csv_text(csv_path, source, MAX_CSV_BYTES)
    base = csv_path.resolve().parent
    rows: dict[Path, tuple[str, int]] = {}
    shots = Shots(source, [], [])
    for line, row in path_label_rows(text, source):
        if len(row) != 2 or not row[1].strip():
            raise InputError(f"{source}: line {line}: expected 'path,label', got {row!r}")
        path, label = base / row[0].strip(), row[1].strip()
        if path in rows:
            if rows[path][0] != label:
                raise InputError(f"{source}: line {line}: {row[0].strip()} is labelled {label!r} here but "
                                 f"{rows[path][0]!r} on line {rows[path][1]}; list each image once")
            continue
        if not path.is_file():
            raise InputError(f"{source}: line {line}: {path} is not a file")
        rows[path] = (label, line)
        if _is_image(path):
            shots.files.append(path)
            shots.labels.append(label)
        else:
            shots.ignored.append(path)
    order = sorted(range(len(shots.files)), key=lambda i: (shots.labels[i], str(shots.files[i])))
    shots.files, shots.labels = [shots.files[i] for i in order], [shots.labels[i] for i in order]
    _at_least_two(shots)
    return shots


def _at_least_two(shots: Shots) -> None:
    classes = shots.classes
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise InputError(f"{shots.source}: a classifier needs at least 2 classes, found {found}; "
                         "add a sub-folder (or CSV label) per class")
