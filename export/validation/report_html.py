"""report.html: the drift report for people, one self-contained page (CSS, plots and thumbnails inline).

The page is a Jinja2 template (``templates/report.html.j2``) with autoescaping on, so an image
path, a label or a backend name is always text, never markup. This module only prepares the
figures (formatted numbers, PNG plots and JPEG thumbnails as data URIs) from report.json's dict and
the in-memory :class:`.validate.ValidationResult` (its per-image arrays feed the histograms).
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Any

from vitmsn.export.validation.drift_report import (SUMMARY_COLUMNS, fmt, prediction_text, result_label, histogram_png,
                                                   requantization_markdown, sensitivity_png, thumbnail_jpeg)
from vitmsn.export.validation.validate import ValidationResult

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td.text{text-align:left}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
.pass{color:#17702c;font-weight:600}.fail{color:#b00020;font-weight:700}.na{color:#888}
.worst{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:6px;width:190px;font-size:12px}
.card img{display:block;margin:0 auto 4px}.banner{padding:10px 14px;font-size:18px;border-radius:4px}
.banner.pass{background:#e3f4e6}.banner.fail{background:#fbe3e6}"""
OUTPUT_HEADERS = ["output", "max abs", "mean abs", "rel err", "cos min", "cos p1", "cos mean", "top-1", "KL mean"]


@functools.lru_cache(maxsize=1)
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2")


def _data_uri(data: bytes | None, mime: str) -> str | None:
    return None if data is None else f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _worst(w: dict[str, Any], precision: str, root: Path) -> dict[str, Any]:
    lines = []
    if w.get("label"):
        lines.append(f"label: {w['label']}")
    if w.get("reference"):
        lines += [f"pytorch: {prediction_text(w['reference'])}", f"{precision}: {prediction_text(w['prediction'])}"]
    lines.append(f"cosine {fmt(w.get('cosine'), 'cos')}" + (f", KL {fmt(w.get('kl'), 'sci')}" if "kl" in w else ""))
    return {"image": w["image"], "thumbnail": _data_uri(thumbnail_jpeg(root / w["image"]), "image/jpeg"),
            "lines": lines, "differs": bool(w.get("reference")) and not w.get("top1_agree", True)}


def render_html(report: dict[str, Any], result: ValidationResult) -> str:
    results = []
    for r, obj in zip(report["results"], result.results):
        results.append({
            "backend": r["backend"], "label": result_label(r), "file": r["file"], "passed": r["passed"], "precision": r["precision"],
            "gates": [{"gate": g["gate"], "metric": g["metric"], "value": fmt(g["value"], "exact"),
                       "threshold": f"{g['op']} {g['threshold']:g}", "source": g["source"], "passed": g["passed"]}
                      for g in r["gates"]],
            "outputs": [[o, fmt(s.get("max_abs"), "sci"), fmt(s.get("mean_abs"), "sci"), fmt(s.get("rel_l2_mean"), "sci"),
                         fmt(s.get("cosine_min"), "cos"), fmt(s.get("cosine_p1"), "cos"), fmt(s.get("cosine_mean"), "cos"),
                         fmt(s.get("top1_agreement"), "pct"), fmt(s.get("kl_mean"), "sci")] for o, s in r["outputs"].items()],
            "histograms": _data_uri(histogram_png(obj, result.primary_output), "image/png"),
            "worst": [_worst(w, r["precision"], result.images.root) for w in r["worst_images"]],
        })
    sensitivity = None
    if report.get("sensitivity"):
        s = report["sensitivity"]
        sensitivity = {"method": s["method"], "images": s["images"], "score": s["score"],
                       "plot": _data_uri(sensitivity_png(s), "image/png"),
                       "rows": [[str(i + 1), g["group"], fmt(g["score"], "sci"), fmt(g.get("top1_agreement"), "pct"),
                                 fmt(g.get("cosine_mean"), "cos")] for i, g in enumerate(s["ranking"])]}
    ref, images = report["reference"], report["images"]
    return _template().render(
        css=CSS, passed=report["passed"], reference=ref, images=images,
        reference_accuracy=fmt(ref["accuracy"], "pct") if ref.get("accuracy") is not None else None,
        failures=result.failures(),
        summary={"headers": ["backend", "precision", "gates"] + [h for _, h, _ in SUMMARY_COLUMNS] + ["img/s"],
                 "rows": [{"backend": r["backend"], "label": result_label(r), "passed": r["passed"],
                           "cells": [fmt(r["metrics"].get(k), kind) for k, _, kind in SUMMARY_COLUMNS]
                           + [fmt(r["timing"]["images_per_second"])]} for r in report["results"]]},
        results=results, output_headers=OUTPUT_HEADERS, sensitivity=sensitivity,
        requantization="\n".join(requantization_markdown(report["requantization"])) if report.get("requantization") else None,
        skipped_images=images["skipped"], skipped_backends=report.get("skipped_backends") or [],
        stages=report.get("stages") or [], fewshot=_fewshot(report.get("fewshot")),
    ) + "\n"


def _fewshot(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few-shot head's section: its figures (report.md's lines) and the confusion-matrix plot."""
    if not block:
        return None
    from vitmsn.export.fewshot.record import confusion_png, fewshot_markdown

    return {"lines": [line.removeprefix("- ") for line in fewshot_markdown(block)
                      if line.startswith("- ")],
            "plot": _data_uri(confusion_png(block), "image/png"), "classes": block["classes"],
            "per_class": (block.get("cross_validation") or {}).get("per_class_accuracy") or {}}
