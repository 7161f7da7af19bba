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
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .fields import Entry, Where, entry, integer, json_field, listing, number, obj, read_relpath, read_sha256, text

if TYPE_CHECKING:  # the manifest imports this module
    from .document import Manifest

VERDICTS = ("passed", "failed", "inconclusive")
BY = ("export", "validate")
# What a verdict read of the manifest: a change to any of these (a swapped label, another mean/std) voids it.
COVERED = ("model", "labels", "preprocess", "inputs", "outputs", "batch")


def manifest_content_sha256(manifest_json: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of the manifest parts a verdict depends on."""
    covered = {k: manifest_json.get(k) for k in COVERED}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _plain_text(value: Any, where: Where) -> str:
    return str(value)


@dataclass(frozen=True)
class GateRecord(Entry):
    """One gate as decided: the figure, its one-sided bound, the threshold, the sample size."""

    gate: str = json_field(text())
    metric: str = json_field(text())
    op: str = json_field(text((">=", "<=")))
    threshold: float = json_field(number())
    n: int = json_field(integer(0))
    verdict: str = json_field(text(VERDICTS))
    value: float | None = json_field(number(), default=None, omit=lambda v: False)
    bound: float | None = json_field(number(), default=None, omit=lambda v: False)
    needed: int | None = json_field(integer(1), default=None, omit=lambda v: False)  # inconclusive: images that would decide
    source: str = json_field(text(), default="default")

    JSON_ORDER = ("gate", "metric", "op", "threshold", "value", "bound", "n", "verdict", "needed", "source")

    def describe(self) -> str:
        shown = "none" if self.bound is None else f"{self.bound:.6g}"
        value = "n/a" if self.value is None else f"{self.value:.6g}"
        text = f"{self.metric} {value} (bound {shown}, n={self.n}) {self.op} {self.threshold:g}: {self.verdict}"
        return text + (f", {self.needed} images would decide" if self.verdict == "inconclusive" and self.needed else "")


@dataclass(frozen=True)
class VerdictRecord(Entry):
    """The latest verdict of one precision on one backend (and flavour: "" the precision's own graph)."""

    precision: str = json_field(text())
    backend: str = json_field(text())
    flavour: str = json_field(_plain_text, required=True, omit=lambda v: False)  # "": the precision's own graph
    verdict: str = json_field(text(VERDICTS))
    file: str = json_field(read_relpath)
    sha256: str = json_field(read_sha256)
    manifest_sha256: str = json_field(read_sha256)
    images: dict[str, Any] = json_field(obj)  # count, sha256 (of the images' bytes, in order), source
    gates: tuple[GateRecord, ...] = json_field(listing(entry(GateRecord)))
    by: str = json_field(text(BY))
    report: str = json_field(_plain_text, default="", omit=lambda v: False)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.precision, self.backend, self.flavour

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + (f" ({self.flavour})" if self.flavour else "")

    def reason(self) -> str:
        """Why it is not passed, in one line: the gates that failed or could not decide."""
        bad = [g for g in self.gates if g.verdict != "passed"]
        return "; ".join(g.describe() for g in bad) or self.verdict


def merged(old: Iterable[VerdictRecord], new: Iterable[VerdictRecord]) -> tuple[VerdictRecord, ...]:
    """``old`` with each record of ``new`` replacing the one of the same precision/backend/flavour: a validate
    of a subset updates that subset and keeps the others."""
    fresh = {r.key: r for r in new}
    kept = [r for r in old if r.key not in fresh]
    return tuple(kept + list(fresh.values()))


def shipped_sha256(manifest: "Manifest") -> dict[str, str]:
    """Relative path -> SHA-256 of every graph and engine the manifest ships."""
    return {f.file: f.sha256 for f in manifest.files() if f.sha256 and not f.role.startswith(("reports.", "logs"))}


def void_reason(record: VerdictRecord, manifest: "Manifest", on_disk: Mapping[str, str] | None = None) -> str | None:
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


def overall(manifest: "Manifest") -> str | None:
    """The word over everything that ships: failed if any current verdict failed, inconclusive if any is
    inconclusive or void, else passed; None when nothing was judged."""
    if not manifest.verdicts:
        return None
    words = ["inconclusive" if void_reason(r, manifest) else r.verdict for r in manifest.verdicts]
    return "failed" if "failed" in words else "inconclusive" if "inconclusive" in words else "passed"


def failed_precisions(manifest: "Manifest") -> dict[str, VerdictRecord]:
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


def verdict_note(manifest: "Manifest", precision: str) -> str | None:
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
