"""Verdict records (:mod:`vitmsn.runtime.manifest.verdicts`) from what the export and ``vitmsn validate`` measured,
and the manifest that holds them.

* :func:`records_from_validation`: one record per backend/precision/flavour of a ``vitmsn validate`` run
  (also the export's ``--validate-images`` run);
* :func:`records_from_export`: one per drift row of the export's own comparison (held-out images);
  rows on synthetic tensors, whose gates are not enforced, give none;
* :func:`with_verdicts`: the manifest with those records merged in (a subset replaces its own keys and
  keeps the others) and its top-level ``verdict``/``passed`` over everything that ships;
* :func:`check_unchanged`: what a validation ran is still what the directory ships, else nothing is
  recorded (a re-export that swapped the directory meanwhile must not inherit the old graphs' verdict).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from vitmsn.core.errors import InputError
from vitmsn.runtime.manifest import Manifest
from vitmsn.runtime.manifest.verdicts import GateRecord, VerdictRecord, manifest_content_sha256, merged, overall, void_reason

from vitmsn.export.validation.gates import worst

# the export's drift row labels that are a flavour of their precision's graph (validate's variant names)
EXPORT_FLAVOURS = {"int8_cpu": "onnxruntime_cpu", "bf16_openvino": "inference bf16"}


def _gates(gates: Iterable[dict[str, Any]]) -> tuple[GateRecord, ...]:
    return tuple(GateRecord(g["gate"], g["metric"], g["op"], float(g["threshold"]), int(g.get("n", 0)),
                            g.get("verdict", "passed" if g.get("passed") else "failed"), value=g.get("value"),
                            bound=g.get("bound"), needed=g.get("needed"), source=g.get("source", "default")) for g in gates)


def files_sha256(files: Sequence[Path]) -> str:
    """SHA-256 over the bytes of ``files``, in order (the images a verdict was measured on)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return digest.hexdigest()


def records_from_validation(result: Any, by: str = "validate", report: str = "report.json") -> list[VerdictRecord]:
    """One record per result of a :class:`.validate.ValidationResult`."""
    images = {"count": len(result.evaluated), "sha256": result.images_sha256, "source": str(result.images.root)}
    return [VerdictRecord(r.precision, r.backend, r.variant, r.verdict, r.file, r.sha256, result.manifest_sha256,
                          images, _gates(g.to_dict() for g in r.gates), by, report) for r in result.results]


def records_from_export(rows: Sequence[dict[str, Any]], manifest: Manifest, inputs: dict[str, Any] | None,
                        enforced: bool) -> list[VerdictRecord]:
    """One record per drift row of the export (``compare_with_reference``); none for unenforced rows."""
    if not rows or inputs is None or not (inputs.get("real_images") or enforced):
        return []
    content = manifest_content_sha256(manifest.to_json())
    images = {"count": inputs.get("count", 0), "sha256": inputs.get("sha256", ""), "source": inputs.get("source", "")}
    out = []
    for row in rows:
        precision, label = row["precision"], row.get("variant", row["precision"])
        entry = manifest.precisions.get(precision)
        if entry is None:
            continue
        flavour = EXPORT_FLAVOURS.get(label, "")
        ref = entry.flavours.get(flavour, entry) if flavour in entry.flavours else entry
        verdict = worst([g.get("verdict", "passed" if g.get("passed") else "failed") for g in row.get("gates", [])])
        out.append(VerdictRecord(precision, row.get("backend", "onnxruntime"), flavour, verdict, ref.file, ref.sha256,
                                 content, images, _gates(row.get("gates", [])), "export", "report.json"))
    return out


def check_unchanged(now: Manifest, records: Sequence[VerdictRecord]) -> None:
    """Refuse (exit 2, nothing recorded) when a file a record ran, or the manifest content it read, is no longer
    what ``now`` ships: the directory changed while the validation ran."""
    for r in records:
        reason = void_reason(r, now)
        if reason:
            raise InputError(f"{now.root}: {reason} while {r.name} was being validated (re-exported meanwhile?); "
                             "nothing was recorded: run vitmsn validate again")


def with_verdicts(manifest: Manifest, records: Iterable[VerdictRecord], stages_passed: bool = True) -> Manifest:
    """``manifest`` with ``records`` merged into its verdicts and its top-level word (and ``passed``) over all of
    them; ``stages_passed`` false (an export check other than a drift gate failed) makes the word failed."""
    m = replace(manifest, verdicts=merged(manifest.verdicts, records))
    word = worst((["failed"] if not stages_passed else []) + [overall(m) or "passed"])
    return replace(m, verdict=word, passed=word == "passed")
