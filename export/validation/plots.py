"""The report's pictures, as PNG/JPEG bytes: drift histograms, the INT8 sensitivity ranking, the few-shot
confusion matrix and image thumbnails. matplotlib's object API (no pyplot state), Agg canvas."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vitmsn.export.validation.validate import BackendResult


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def histogram_png(r: BackendResult, primary: str) -> bytes:
    """Histograms of per-image (1 - cosine) and max abs error of the primary output, log x axes."""
    return _png(histogram_figure(r, primary))


def histogram_figure(r: BackendResult, primary: str) -> Any:
    """The matplotlib Figure of :func:`histogram_png`."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    per = r.per_output[primary]
    fig = Figure(figsize=(9, 2.8))
    for ax, values, title in ((fig.add_subplot(1, 2, 1), 1.0 - per["cosine"], "1 - cosine per image"),
                              (fig.add_subplot(1, 2, 2), per["max_abs"], "max abs error per image")):
        v = np.clip(values[np.isfinite(values)], 1e-16, None)
        if v.size:
            lo, hi = np.log10(v.min()), np.log10(v.max())
            bins = np.logspace(lo - 0.1, hi + 0.1, 30) if hi - lo > 1e-9 else np.logspace(lo - 0.5, lo + 0.5, 3)
            ax.hist(v, bins=list(bins), color="#3b6ea8")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow log range overlap
        # the backend's name on its own wrapped line(s): long names ran into the neighbouring chart's title
        name = "\n".join(textwrap.wrap(r.name, 48)) or r.name
        ax.set_title(f"{name}\n{title} ({primary})", fontsize=9)
        ax.set_ylabel("images", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


def sensitivity_png(s: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    ranking = s["ranking"][:16][::-1]
    fig = Figure(figsize=(7, 0.3 * len(ranking) + 1))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh([g["group"] for g in ranking], [g["score"] for g in ranking], color="#a84b3b")
    ax.set_xlabel(s["score"], fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def thumbnail_jpeg(path: Path, size: int = 112) -> bytes | None:
    from vitmsn.runtime.images.preprocess import to_rgb

    try:
        im = to_rgb(path)
    except Exception:  # the report must not fail because one image cannot be shown
        return None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def confusion_png(block: dict[str, Any]) -> bytes | None:
    """The few-shot head's cross-validated confusion matrix (None when C was fixed: no cross-validation)."""
    cv = block.get("cross_validation")
    if not cv:
        return None
    from matplotlib.figure import Figure

    classes, matrix = block["classes"], np.asarray(cv["confusion"])
    size = 1.6 + 0.45 * len(classes)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"cross-validated, {cv['folds']} folds, C={block['C']:g}")
    if len(classes) <= 30:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    return _png(fig)
