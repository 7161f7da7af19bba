"""The one drift verdict: a backend's outputs against the reference's, summarised and gated.

Every comparison in vitmsn ends here: the export's per-precision drift stages
(:mod:`.comparison`), the INT8 re-quantization loop (:class:`..precision.requantize.GateCheck`)
and ``vitmsn validate`` (:mod:`.validate`, which streams per-image figures batch by batch and
passes them in already computed). Figures come from :mod:`.metrics`, gates from :mod:`.gates`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from vitmsn.export.validation import metrics as dm
from vitmsn.export.validation.gates import GateResult, Gates, evaluate, worst
from vitmsn.export.validation.stats import Verdict


@dataclass(frozen=True)
class DriftVerdict:
    metrics: dict[str, Any]  # the primary output's summary (+ accuracy figures with labels)
    gates: list[GateResult]

    @property
    def verdict(self) -> Verdict:
        return worst([g.verdict for g in self.gates])

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    @property
    def failed(self) -> list[GateResult]:
        """Every gate that did not pass (failed or inconclusive)."""
        return [g for g in self.gates if not g.passed]


def primary_output(reference: Mapping[str, np.ndarray]) -> str:
    """``logits`` for a classifier, ``embedding`` for a feature extractor."""
    return "logits" if "logits" in reference else "embedding"


def drift_verdict(per_image: Mapping[str, np.ndarray], gates: Gates, precision: str, *, classification: bool,
                  got_logits: np.ndarray | None = None, ref_logits: np.ndarray | None = None,
                  labels: np.ndarray | None = None) -> DriftVerdict:
    """Summary of the primary output's per-image figures, accuracy when labels are known, and the gates."""
    metrics: dict[str, Any] = dm.summarize(dict(per_image))
    paired = None
    if classification and labels is not None and got_logits is not None and ref_logits is not None \
            and (np.asarray(labels) >= 0).any():
        acc, ref = dm.accuracy(got_logits, labels), dm.accuracy(ref_logits, labels)
        if acc is not None and ref is not None:
            metrics.update(accuracy=acc, accuracy_reference=ref, accuracy_drop=round(ref - acc, 10),
                           labelled_images=int((np.asarray(labels) >= 0).sum()))
            paired = dm.paired_counts(got_logits, ref_logits, labels)
    return DriftVerdict(metrics, evaluate(gates, precision, per_image, paired))


def compare_outputs(got: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], gates: Gates, precision: str,
                    labels: np.ndarray | None = None) -> DriftVerdict:
    """:func:`drift_verdict` of whole output arrays (every image at once)."""
    primary = primary_output(reference)
    classification = primary == "logits"
    per = dm.per_image(got[primary], reference[primary], classification=classification)
    return drift_verdict(per, gates, precision, classification=classification, got_logits=got.get("logits"),
                         ref_logits=reference.get("logits"), labels=labels)


@dataclass
class ReferenceCache:
    """PyTorch reference outputs of preprocessed images, keyed by the image tensor's bytes.

    An export with ``--validate-images`` gates its precisions on those images and then runs the full
    validation on them again: both read the reference from here, so PyTorch runs once per image."""

    rows: dict[bytes, dict[str, np.ndarray]] = field(default_factory=dict)

    @staticmethod
    def key(row: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).tobytes(), digest_size=16).digest()

    def add(self, x: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
        for i, row in enumerate(x):
            self.rows[self.key(row)] = {k: np.asarray(v[i]) for k, v in outputs.items()}

    def outputs(self, x: np.ndarray, compute: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The reference outputs of ``x``: cached rows as they are, the others computed (and cached) in one call."""
        keys = [self.key(row) for row in x]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if missing:
            self.add(x[missing], compute(np.ascontiguousarray(x[missing])))
        names = list(self.rows[keys[0]])
        return {n: np.stack([self.rows[k][n] for k in keys]) for n in names}
