"""Accuracy-drift figures of one backend's outputs against the reference's (numpy only).

Everything is computed per image first (:func:`per_image`), in float64, so that a run can stream
batch by batch and still report exact figures; :func:`summarize` turns the per-image arrays into
the report's numbers. Each sample is flattened to one vector ``g`` (got) or ``r`` (reference):

* ``max_abs`` / ``mean_abs``: ``max |g - r|`` / ``mean |g - r|`` over the sample's elements;
* ``rel_l2``: ``||g - r|| / ||r||`` (relative error of the whole vector; ``inf`` when ``r`` is
  all zeros and ``g`` is not);
* ``cosine``: ``<g, r> / (||g|| ||r||)``; 1 when both are all zeros, 0 when only one is;
* classification outputs (logits) also get ``top1_agree`` (argmax equal), ``top5_overlap``
  (``|top-k(g) & top-k(r)| / k`` with ``k = min(5, classes)``) and ``kl``: the divergence
  ``KL(softmax(r) || softmax(g))`` in nats, from a log-sum-exp softmax.

A sample with a non-finite value in ``g`` gets cosine ``-1``, errors ``inf``, ``top1_agree``
false and ``kl`` ``inf``, so that NaN never passes a gate by comparing false both ways.

Summaries: maxima and means of the per-image arrays; ``cosine_p1`` is the 1st percentile
(``numpy.percentile``, linear interpolation) of the per-image cosines, ``cosine_p5`` the 5th
(inverted CDF: the ``ceil(0.05 n)``-th smallest), the one the ``min_cosine`` gate decides on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TOPK = 5


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(a.shape[0], -1).astype(np.float64) if a.ndim > 1 else a.reshape(-1, 1).astype(np.float64)


def cosine_similarity(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of ``[N, ...]`` arrays (conventions in the module docstring)."""
    g, r = _flat(got), _flat(ref)
    gn, rn = np.linalg.norm(g, axis=1), np.linalg.norm(r, axis=1)
    dot = np.einsum("ij,ij->i", g, r)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (gn * rn)
    cos = np.where((gn == 0) & (rn == 0), 1.0, np.where((gn == 0) | (rn == 0), 0.0, cos))
    return np.clip(cos, -1.0, 1.0)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_divergence(got_logits: np.ndarray, ref_logits: np.ndarray) -> np.ndarray:
    """Per-sample ``KL(softmax(ref) || softmax(got))`` in nats."""
    lr, lg = log_softmax(ref_logits), log_softmax(got_logits)
    kl = (np.exp(lr) * (lr - lg)).sum(axis=-1)
    return np.maximum(kl, 0.0)  # rounding can make an exact match a tiny negative number


def topk_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values per row, largest first (ties: lower index first)."""
    x = np.asarray(logits, dtype=np.float64)
    order = np.argsort(-x, axis=-1, kind="stable")
    return order[:, :k]


def top5_overlap(got_logits: np.ndarray, ref_logits: np.ndarray, k: int = TOPK) -> np.ndarray:
    k = min(k, np.asarray(ref_logits).shape[-1])
    tg, tr = topk_indices(got_logits, k), topk_indices(ref_logits, k)
    return np.array([len(set(a) & set(b)) / k for a, b in zip(tg.tolist(), tr.tolist())], dtype=np.float64)


def per_image(got: np.ndarray, ref: np.ndarray, classification: bool = False) -> dict[str, np.ndarray]:
    """Per-sample figures of one output, ``[N, ...]`` each (see the module docstring)."""
    if np.shape(got) != np.shape(ref):
        raise ValueError(f"shape {np.shape(got)} does not match the reference's {np.shape(ref)}")
    g, r = _flat(got), _flat(ref)
    finite = np.isfinite(g).all(axis=1)
    diff = np.abs(g - r)
    rn = np.linalg.norm(r, axis=1)
    dn = np.linalg.norm(g - r, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(rn > 0, dn / rn, np.where(dn > 0, np.inf, 0.0))
    out = {
        "max_abs": np.where(finite, diff.max(axis=1), np.inf),
        "mean_abs": np.where(finite, diff.mean(axis=1), np.inf),
        "rel_l2": np.where(finite, rel, np.inf),
        "cosine": np.where(finite, cosine_similarity(np.nan_to_num(g), r), -1.0),
    }
    if classification:
        safe = np.where(finite[:, None], g, 0.0)
        out["top1_agree"] = (np.argmax(safe, axis=1) == np.argmax(r, axis=1)) & finite
        out["top5_overlap"] = np.where(finite, top5_overlap(safe, r), 0.0)
        out["kl"] = np.where(finite, kl_divergence(safe, r), np.inf)
    return out


def allclose_violations(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """Per sample, how many elements lie outside ``atol + rtol * |ref|`` (numpy.allclose's rule) or are
    not finite: the elementwise parity rule of the FP32 export check and the bench's FP32 CPU rows."""
    g, r = _flat(got), _flat(ref)
    return ((np.abs(g - r) > atol + rtol * np.abs(r)) | ~np.isfinite(g)).sum(axis=1)


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join per-image dicts of consecutive batches."""
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def finite_or_none(x: float) -> float | None:
    """A JSON-safe number: non-finite values become None (the report says so elsewhere)."""
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(per: dict[str, np.ndarray]) -> dict[str, Any]:
    """The report's figures from per-image arrays (``None`` where a value is not finite)."""
    n = len(per["cosine"])
    if n == 0:
        return {"images": 0}
    cos = per["cosine"]
    s: dict[str, Any] = {
        "images": n,
        "max_abs": finite_or_none(per["max_abs"].max()),
        "mean_abs": finite_or_none(per["mean_abs"].mean()),
        "rel_l2_mean": finite_or_none(per["rel_l2"].mean()),
        "rel_l2_max": finite_or_none(per["rel_l2"].max()),
        "cosine_min": finite_or_none(cos.min()),
        "cosine_p1": finite_or_none(np.percentile(cos, 1)),
        # the 5th percentile the min_cosine gate decides on (inverted CDF, as validation.stats.quantile)
        "cosine_p5": finite_or_none(np.sort(cos)[max(0, math.ceil(0.05 * n) - 1)]),
        "cosine_mean": finite_or_none(cos.mean()),
        "nonfinite_images": int(np.isinf(per["max_abs"]).sum()),
    }
    if "top1_agree" in per:
        s["top1_agreement"] = float(per["top1_agree"].mean())
        s["top1_disagreements"] = int((~per["top1_agree"].astype(bool)).sum())
        s["top5_overlap"] = float(per["top5_overlap"].mean())
        s["kl_mean"] = finite_or_none(per["kl"].mean())
        s["kl_max"] = finite_or_none(per["kl"].max())
    return s


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy over the samples whose label is known (``labels >= 0``); None if none are."""
    labels = np.asarray(labels)
    known = labels >= 0
    if not known.any():
        return None
    return float((np.argmax(np.asarray(logits)[known], axis=1) == labels[known]).mean())


def paired_counts(got_logits: np.ndarray, ref_logits: np.ndarray, labels: np.ndarray) -> tuple[int, int, int]:
    """Over the labelled samples: (only the reference right, only ``got`` right, labelled samples), the
    cells of the paired accuracy comparison (:func:`.stats.paired_difference`)."""
    labels = np.asarray(labels)
    known = labels >= 0
    got_ok = np.argmax(np.asarray(got_logits)[known], axis=1) == labels[known]
    ref_ok = np.argmax(np.asarray(ref_logits)[known], axis=1) == labels[known]
    return int((ref_ok & ~got_ok).sum()), int((got_ok & ~ref_ok).sum()), int(known.sum())
