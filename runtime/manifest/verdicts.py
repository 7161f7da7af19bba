"""The one verdict of an artifacts directory: ``manifest.json["verdicts"]``, one record per
precision/backend/flavour, written by the export and updated by ``vitmsn validate``.

Each :class:`VerdictRecord` says what was decided (``passed``/``failed``/``inconclusive``), on which
file (its relative path and the SHA-256 of the bytes that ran), under which manifest content (the
SHA-256 of the canonical JSON of model, labels, preprocess, inputs, outputs and batch:
:func:`manifest_content_sha256`), on which images (count, digest of their bytes, source) and with
which gates (value, bound, threshold, n, verdict each). A record is **void** when the file or the
manifest content changed since (:func:`void_reason`): a swapped label or a rewritten graph is not
covered by the verdict measured before.

Every command reads this one place: ``inspect`` prints it, ``triton`` refuses a precision whose
latest verdict is failed, ``predict``/``serve`` name it at start-up and automatic selection never
picks it (:func:`failed_precisions`). Free of torch, onnx and click: the runtime reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .document import Manifest
from .entries import BY, VERDICTS, GateRecord, VerdictRecord

__all__ = ["BY", "VERDICTS", "COVERED", "GateRecord", "VerdictRecord", "manifest_content_sha256", "merged", "shipped_sha256",
           "void_reason", "overall", "failed_precisions", "failure_line", "verdict_note"]
# What a verdict read of the manifest: a change to any of these (a swapped label, another mean/std) voids it.
COVERED = ("model", "labels", "preprocess", "inputs", "outputs", "batch")


def manifest_content_sha256(manifest_json: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of the manifest parts a verdict depends on."""
    covered = {k: manifest_json.get(k) for k in COVERED}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def merged(old: Iterable[VerdictRecord], new: Iterable[VerdictRecord]) -> tuple[VerdictRecord, ...]:
    """``old`` with each record of ``new`` replacing the one of the same precision/backend/flavour: a validate
    of a subset updates that subset and keeps the others."""
    fresh = {r.key: r for r in new}
    kept = [r for r in old if r.key not in fresh]
    return tuple(kept + list(fresh.values()))


def shipped_sha256(manifest: Manifest) -> dict[str, str]:
    """Relative path -> SHA-256 of every graph and engine the manifest ships."""
    return {f.file: f.sha256 for f in manifest.files() if f.sha256 and not f.role.startswith(("reports.", "logs"))}


def void_reason(record: VerdictRecord, manifest: Manifest, on_disk: Mapping[str, str] | None = None) -> str | None:
    """Why ``record`` no longer covers the artifacts (None while it does): the file it ran is no longer the one
    the manifest ships (or, with ``on_disk``, the one on disk), or the manifest content it read changed."""
    shipped = shipped_sha256(manifest)
    if record.file not in shipped:
        return f"{record.file} is no longer shipped"
    if shipped[record.file] != record.sha256:
        return f"{record.file} changed since it was judged (SHA-256 {record.sha256[:12]}... then)"
    if on_disk is not None and on_disk.get(record.file) not in (None, record.sha256):
        return f"{record.file} on disk is not the file that was judged (SHA-256 {record.sha256[:12]}... then)"
    if record.manifest_sha256 != manifest_content_sha256(manifest.to_json()):
        return "manifest content (model, labels, preprocess, inputs, outputs, batch) changed since it was judged"
    return None


def overall(manifest: Manifest) -> str | None:
    """The word over everything that ships: failed if any current verdict failed, inconclusive if any is
    inconclusive or void, else passed; None when nothing was judged."""
    if not manifest.verdicts:
        return None
    words = ["inconclusive" if void_reason(r, manifest) else r.verdict for r in manifest.verdicts]
    return "failed" if "failed" in words else "inconclusive" if "inconclusive" in words else "passed"


def failed_precisions(manifest: Manifest) -> dict[str, VerdictRecord]:
    """Precision -> its failed record, for every precision whose latest (not void) verdict on some backend
    or flavour is failed. Automatic selection skips these; explicit requests name them."""
    out: dict[str, VerdictRecord] = {}
    for r in manifest.verdicts:
        if r.verdict == "failed" and void_reason(r, manifest) is None:
            out.setdefault(r.precision, r)
    return out


def failure_line(record: VerdictRecord) -> str:
    """One line for start-up output: which precision failed, where and why."""
    return (f"{record.precision} FAILED its latest verdict ({record.name}, by {record.by}"
            f"{', ' + record.report if record.report else ''}): {record.reason()}")


def verdict_note(manifest: Manifest, precision: str) -> str | None:
    """The start-up line for a precision that is not plainly passed: its failure, or that its latest verdict
    is inconclusive (automatic selection still picks an inconclusive precision: no gate showed harm, but none
    proved it either, and the export or validate that judged it exited 1 saying so)."""
    failed = failed_precisions(manifest).get(precision)
    if failed is not None:
        return failure_line(failed)
    for r in manifest.verdicts:
        if r.precision == precision and r.verdict == "inconclusive" and void_reason(r, manifest) is None:
            return (f"{precision}'s latest verdict is inconclusive ({r.name}, by {r.by}): {r.reason()}; "
                    "run vitmsn validate with more images")
    return None
