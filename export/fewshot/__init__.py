"""``vitmsn-export --fewshot``: a backbone and a few labelled images -> a fitted classifier checkpoint.

:func:`fewshot_checkpoint` reads the shots (:mod:`.shots`), embeds them with the FP32 PyTorch backbone through
the runtime's preprocessing (:mod:`.embed`), fits the head (:func:`vitmsn.fewshot.fit_head`) and writes the
Hugging Face checkpoint (:mod:`.checkpoint`) that the export then takes as its model. Every input problem is
an :class:`~vitmsn.errors.InputError` raised before the checkpoint is written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vitmsn.core.errors import InputError
from vitmsn.export.fp32.checkpoint import load_checkpoint
from vitmsn.fewshot import fit_head
from vitmsn.core.progress import activity
from vitmsn.runtime.manifest import CheckpointFiles, FileRef, sha256_file

from .checkpoint import CHECKPOINT_DIR, FILES, backbone_from_state, backbone_state, write_checkpoint
from .embed import embed_shots
from .record import fewshot_block
from .shots import Shots, shots_from_csv, shots_from_folders

__all__ = ["CHECKPOINT_DIR", "FILES", "FewshotCheckpoint", "fewshot_checkpoint", "read_shots"]


@dataclass(frozen=True)
class FewshotCheckpoint:
    directory: Path  # the written checkpoint
    block: dict[str, Any]  # the manifest's "fewshot" block

    def files(self, root: Path) -> CheckpointFiles:
        """The manifest's ``checkpoint`` entry: every file of the checkpoint, relative to ``root``, hashed."""
        return CheckpointFiles(self.directory.relative_to(root).as_posix(), tuple(
            FileRef((self.directory / name).relative_to(root).as_posix(), sha256_file(self.directory / name),
                    (self.directory / name).stat().st_size) for name in FILES))


def read_shots(folder: Path | None, labels_csv: Path | None) -> Shots:
    if folder is not None and labels_csv is not None:
        raise InputError("--fewshot and --fewshot-labels: give one of them (class folders, or a path,label CSV)")
    if labels_csv is not None:
        return shots_from_csv(Path(labels_csv))
    assert folder is not None
    return shots_from_folders(Path(folder))


def fewshot_checkpoint(model: str, folder: Path | None, labels_csv: Path | None, out: Path, *,
                       replace_head: bool = False, skip_unreadable: bool = False,
                       alpha_background: tuple[int, int, int] | None = None, revision: str | None = None) -> FewshotCheckpoint:
    """Fit a head for backbone ``model`` on the shots and write the checkpoint into ``out/checkpoint``."""
    shots = read_shots(folder, labels_csv)
    ck = load_checkpoint(model, revision=revision)
    state = backbone_state(ck, replace_head)
    activity(f"embedding {len(shots.files)} few-shot image(s) of {len(shots.classes)} classes with the FP32 backbone")
    preprocess = replace(ck.preprocess, alpha_background=alpha_background) if alpha_background else ck.preprocess
    found = embed_shots(backbone_from_state(ck, state), preprocess, shots, skip_unreadable=skip_unreadable)
    activity(f"fitting the head on {len(found.labels)} shots (logistic regression, C by cross-validation)")
    head = fit_head(found.embeddings, found.labels)
    directory = write_checkpoint(ck, state, head, out / CHECKPOINT_DIR)
    return FewshotCheckpoint(directory, fewshot_block(head, found, shots.source, CHECKPOINT_DIR))
