"""Drift gates: the thresholds a precision must meet against the PyTorch FP32 reference, decided on
one-sided 95 % confidence bounds (:mod:`.stats`), never on the sample's own figure.

Three gates, each on the *primary* output (``logits`` for a classifier, ``embedding`` for a
feature extractor), each per precision, each reported as value, bound, threshold, n and verdict:

* ``min_top1_agreement``: share of images whose top-1 class equals the reference's (classifiers);
  decided on its Wilson lower bound;
* ``min_cosine``: the 5th percentile of the per-image cosine similarities (``cosine_p5``; "95 % of
  images have at least this cosine"), decided on its exact order-statistic lower bound. The
  minimum is still reported (``cosine_min``) but no longer gates: it falls as the sample grows, so a
  gate on it flips with the sample size;
* ``max_accuracy_drop``: reference accuracy minus backend accuracy on the same labelled images,
  decided on the Agresti-Min upper bound of that paired difference.

``passed``: the pessimistic bound clears the threshold; ``failed``: the optimistic bound misses it;
``inconclusive``: the sample is too small to tell, and ``needed`` says how many images (at the rates
seen) would decide. With every image agreeing, top-1 >= 0.97 needs 88 images, >= 0.95 needs 52;
the 5th percentile has a lower bound from 59 images on; an accuracy drop <= 0.01 with no image
changing needs 163 labelled images, <= 0.02 needs 81.

Defaults (``DEFAULT_THRESHOLDS``), thresholds on the bound, and why:

* **fp32** is the same arithmetic as the reference up to operation order: ONNX Runtime matches
  PyTorch to about 1e-5 absolute, i.e. a cosine of 1 - 1e-10. ``cosine >= 0.99999`` is "essentially
  exact" with room for ~100x that noise; top-1 ``>= 0.97`` and accuracy drop ``<= 0.01`` are what a
  few hundred images can prove when nothing changes;
* **fp16** keeps 11 significant bits: cosine about 1 - 5e-7 per image on a trained ViT.
  ``cosine >= 0.999`` catches overflow and broken casts with a wide margin; top-1 ``>= 0.97``,
  accuracy drop ``<= 0.01``;
* **bf16** (OpenVINO's BF16 inference of the FP32 graph on CPUs with AVX512_BF16/AMX): measured
  cosine 0.99996 per image on the demo and on ViT-S; ``cosine >= 0.9999``, top-1 ``>= 0.97``,
  accuracy drop ``<= 0.01``;
* **int8** PTQ of ViTs is lossy (activation outliers after LayerNorm/GELU): published per-tensor
  PTQ loses 0.5-2 points of ImageNet top-1. ``top-1 >= 0.95``, ``cosine >= 0.95``, accuracy drop
  ``<= 0.02``: a good INT8 export passes, a broken scale or a skipped calibration (cosine 0.75-0.9,
  agreement near chance) fails.

Overrides come from the command line or the config file (``[tool.vitmsn.validate]``): a number
applies to every precision; ``"int8=0.97,fp16=0.995"`` (or a TOML table ``{int8 = 0.97}``) sets
the named precisions only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from vitmsn.core.errors import InputError
from vitmsn.export.validation import stats
from vitmsn.export.validation.stats import CONFIDENCE, Bound, Verdict

COSINE_QUANTILE = 0.05  # min_cosine gates this quantile of the per-image cosines (reported as cosine_p5)
GATE_METRICS = {  # gate name -> (metric in the report, comparison)
    "min_top1_agreement": ("top1_agreement", ">="),
    "min_cosine": ("cosine_p5", ">="),
    "max_accuracy_drop": ("accuracy_drop", "<="),
}
OPTION_NAMES = {name: "--" + name.replace("_", "-") for name in GATE_METRICS}


@dataclass(frozen=True)
class Thresholds:
    min_top1_agreement: float | None = None
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None


DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(min_top1_agreement=0.97, min_cosine=0.99999, max_accuracy_drop=0.01),
    "fp16": Thresholds(min_top1_agreement=0.97, min_cosine=0.999, max_accuracy_drop=0.01),
    "bf16": Thresholds(min_top1_agreement=0.97, min_cosine=0.9999, max_accuracy_drop=0.01),
    "int8": Thresholds(min_top1_agreement=0.95, min_cosine=0.95, max_accuracy_drop=0.02),
}


def parse_threshold(value: Any, option: str) -> dict[str, float]:
    """``0.97`` / ``"0.97"`` -> ``{"*": 0.97}``; ``"int8=0.97,fp16=0.99"`` or a mapping -> per precision."""
    if value is None or value == "":
        return {}
    items: list[tuple[str, Any]]
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [("*", value)]
    elif isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            key, sep, number = part.partition("=")
            items.append((key.strip().lower(), number) if sep else ("*", key))
    else:
        raise InputError(f"{option} {value!r}: expected a number or PRECISION=NUMBER[,...]")
    out: dict[str, float] = {}
    for key, number in items:
        if key != "*" and key not in DEFAULT_THRESHOLDS:
            raise InputError(f"{option} {value!r}: unknown precision {key!r}; use {', '.join(DEFAULT_THRESHOLDS)}")
        try:
            out[key] = float(number)
        except (TypeError, ValueError):
            raise InputError(f"{option} {value!r}: {number!r} is not a number") from None
    return out


@dataclass(frozen=True)
class Gates:
    """Thresholds per precision, and which of them were set by the user."""

    thresholds: dict[str, Thresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    overridden: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def build(cls, **overrides: Any) -> "Gates":
        """``Gates.build(min_top1_agreement=0.97, min_cosine="int8=0.9")``; None keeps the default."""
        thresholds = dict(DEFAULT_THRESHOLDS)
        overridden = set()
        for name, value in overrides.items():
            if name not in GATE_METRICS:
                raise TypeError(f"unknown gate {name!r}; gates are {', '.join(GATE_METRICS)}")
            for precision, number in parse_threshold(value, OPTION_NAMES[name]).items():
                for p in (DEFAULT_THRESHOLDS if precision == "*" else [precision]):
                    thresholds[p] = replace(thresholds[p], **{name: number})
                    overridden.add((p, name))
        return cls(thresholds, frozenset(overridden))

    def for_precision(self, precision: str) -> Thresholds:
        return self.thresholds.get(precision, Thresholds())

    def to_dict(self) -> dict[str, Any]:
        return {p: {k: v for k, v in asdict(t).items()} for p, t in self.thresholds.items()}


VERDICTS: tuple[Verdict, ...] = ("passed", "failed", "inconclusive")


def worst(verdicts: list[str]) -> Verdict:
    """failed beats inconclusive beats passed; no verdict at all is passed (nothing was gated)."""
    return "failed" if "failed" in verdicts else "inconclusive" if "inconclusive" in verdicts else "passed"


@dataclass(frozen=True)
class GateResult:
    gate: str
    metric: str
    op: str
    threshold: float
    value: float | None  # the sample's figure
    bound: float | None  # the one-sided bound that must clear the threshold (lower for >=, upper for <=)
    n: int
    verdict: Verdict
    source: str  # "default" or "override"
    needed: int | None = None  # inconclusive: images that would decide, at the rates seen (None: too many)
    confidence: float = CONFIDENCE

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def describe(self, backend: str, precision: str) -> str:
        value = "not finite" if self.value is None else f"{self.value:.8g}"
        side = "lower" if self.op == ">=" else "upper"
        bound = "none" if self.bound is None else f"{self.bound:.8g}"
        text = (f"{backend} {precision}: {self.metric} = {value} ({self.confidence:.0%} {side} bound {bound}, "
                f"n={self.n}), gate {self.op} {self.threshold:g}: {self.verdict} ({self.source}, {OPTION_NAMES[self.gate]})")
        if self.verdict == "inconclusive":
            text += (f"; {self.needed} held-out images would decide it" if self.needed else
                     "; no feasible sample would decide it (the figure sits on the threshold)")
        return text


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _gate(name: str, threshold: float, source: str, bound: Bound, decide_at: Callable[[int], Verdict]) -> GateResult:
    metric, op = GATE_METRICS[name]
    verdict = decide_at(bound.n) if bound.n else "inconclusive"
    needed = None
    if verdict == "inconclusive" and bound.n:
        needed = stats.images_needed(lambda m: decide_at(m) != "inconclusive", bound.n, limit=1_000_000)
    side = bound.lower if op == ">=" else bound.upper
    return GateResult(name, metric, op, float(threshold), _finite(bound.estimate), _finite(side), bound.n, verdict,
                      source, needed, bound.confidence)


def evaluate(gates: Gates, precision: str, per_image: Mapping[str, np.ndarray],
             paired: tuple[int, int, int] | None = None) -> list[GateResult]:
    """The gates of ``precision`` on per-image figures (:func:`.metrics.per_image` of the primary output):
    ``top1_agree`` and ``cosine``; ``paired`` = (images only the reference gets right, only the backend
    gets right, labelled images) for the accuracy drop. A gate whose figures are absent is not applied
    (no labels: no accuracy drop; a feature extractor: no top-1)."""
    results = []
    for name, threshold in asdict(gates.for_precision(precision)).items():
        if threshold is None:
            continue
        source = "override" if (precision, name) in gates.overridden else "default"
        t = float(threshold)
        if name == "min_top1_agreement" and "top1_agree" in per_image:
            agree = np.asarray(per_image["top1_agree"], dtype=bool)
            k, n = int(agree.sum()), len(agree)
            results.append(_gate(name, t, source, stats.wilson(k, n),
                                 lambda m: stats.wilson(round(k * m / n), m).decide(t, ">=")))
        elif name == "min_cosine" and "cosine" in per_image:
            cos = np.asarray(per_image["cosine"], dtype=np.float64)
            below, n = int((cos < t).sum()), len(cos)
            results.append(_gate(name, t, source, stats.quantile(cos, COSINE_QUANTILE),
                                 lambda m: stats.quantile_at_least(round(below * m / n), m, COSINE_QUANTILE)))
        elif name == "max_accuracy_drop" and paired is not None and paired[2] > 0:
            b, c, n = paired
            results.append(_gate(name, t, source, stats.paired_difference(b, c, n),
                                 lambda m: stats.paired_difference(round(b * m / n), round(c * m / n), m).decide(t, "<=")))
    return results
