"""The drift report: report.json (stable schema), report.md (tables) and report.html (self-contained).

report.json follows the stable, documented schema (``reference``, ``passed``, ``results[]`` with ``backend``,
``precision``, ``passed``, ``metrics``); fields are only ever added. When the directory already
holds an export report, its other keys (the export's ``stages`` in particular) are kept, and the
top-level ``passed`` covers both the stages and the drift gates, so one report.json describes
the run; ``gates_passed`` is the drift verdict alone.

report.html embeds everything (CSS, plots as base64 PNG, thumbnails as base64 JPEG): it can be
mailed or archived as one file and opened offline; its pictures come from :mod:`.plots`. The page is a Jinja2 template (``templates/report.html.j2``)
with autoescaping on, so an image path, a label or a backend name is always text, never markup;
this module only prepares its figures (formatted numbers, data URIs) from report.json's dict and
the in-memory :class:`.validate.ValidationResult` (its per-image arrays feed the histograms).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import json
from pathlib import Path
from typing import Any, Collection

import vitmsn
from vitmsn.runtime.manifest import write_bytes_atomic, write_json_atomic

from vitmsn.export.fp32.checks import stage_word
from vitmsn.export.validation.plots import histogram_png, sensitivity_png, thumbnail_jpeg
from vitmsn.export.validation.validate import ValidationResult

SUMMARY_COLUMNS = [  # (metric key, header, format)
    ("top1_agreement", "top-1 agree", "pct"), ("top5_overlap", "top-5 overlap", "pct"),
    ("cosine_min", "cos min", "cos"), ("cosine_p1", "cos p1", "cos"), ("cosine_mean", "cos mean", "cos"),
    ("max_abs", "max abs", "sci"), ("mean_abs", "mean abs", "sci"), ("rel_l2_mean", "rel err", "sci"),
    ("kl_mean", "KL mean", "sci"), ("accuracy", "accuracy", "pct"), ("accuracy_drop", "acc drop", "pts"),
]

# The export's stage for its own run of this validation (vitmsn-export --validate-images).
VALIDATION_STAGE = "drift_validation"

# Keys a validation writes; an older report's values for these are replaced, never carried over.
VALIDATION_KEYS = frozenset({"reference", "passed", "gates_passed", "task", "primary_output", "results", "checks",
                             "images", "skipped_backends", "thresholds", "sensitivity", "requantization",
                             "generated_utc", "vitmsn_version", "verdict", "verdicts", "manifest_sha256"})


def fmt(value: Any, kind: str = "g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "pts":
        return f"{100 * value:+.2f} pt"
    if kind == "cos":
        return f"{value:.6f}"
    if kind == "exact":  # gate values: enough digits to see which side of the threshold they are
        return f"{value:.8g}"
    if kind == "sci":
        return f"{value:.2e}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- report.json ------------------------------------------------------------------------------
def report_dict(result: ValidationResult, previous: dict[str, Any] | None = None, verdicts: Any = None) -> dict[str, Any]:
    """report.json's content: the validation, merged over ``previous`` (an export report) if any; ``verdicts``
    (the manifest with this run's verdicts merged in) sets the top-level word over everything that ships."""
    ours = result.to_dict()
    ours["gates_passed"] = ours["passed"]
    ours["generated_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    ours["vitmsn_version"] = vitmsn.__version__
    # Keep what another step wrote (the export's "stages"), never a stale figure of an older validation.
    merged = {k: v for k, v in (previous or {}).items() if k not in ours and k not in VALIDATION_KEYS}
    if previous and "stages" in previous and "export_results" not in merged and previous.get("results"):
        # the export's own per-graph comparison rows (fp32/fp16/int8/int8_cpu on its comparison inputs),
        # kept under their own key: "results" is the validation's, as the documented report schema defines it
        merged["export_results"] = previous["results"]
    merged.update(ours)
    if any(s.get("stage") == VALIDATION_STAGE for s in merged.get("stages") or []):
        # the export's own run of this validation (--validate-images): this run's verdict replaces it
        merged["stages"] = [validation_stage(result) if s.get("stage") == VALIDATION_STAGE else s
                            for s in merged["stages"]]
        if "failed_stages" in merged:
            merged["failed_stages"] = [s["stage"] for s in merged["stages"] if not s.get("passed", False)]
    stages = merged.get("stages") or []
    # with the manifest's verdicts at hand, the export's drift stages are judged there (a later validate replaces
    # them); its other checks (onnx.checker, parity, ...) still fail the directory
    judged = ("drift_", "requantize_") if verdicts is not None else None
    words = [ours.get("verdict") or ("passed" if ours["passed"] else "failed")] + [
        stage_word(s) for s in stages if not (judged and str(s.get("stage", "")).startswith(judged))]
    if verdicts is not None:
        words.append(verdicts.verdict or "passed")
        merged["verdicts"] = [v.to_json() for v in verdicts.verdicts]
    merged["verdict"] = "failed" if "failed" in words else "inconclusive" if "inconclusive" in words else "passed"
    merged["passed"] = merged["verdict"] == "passed"
    return merged


def validation_stage(result: ValidationResult, source: str | Path | None = None) -> dict[str, Any]:
    """The export's ``drift_validation`` stage (``--validate-images``) for ``result``, the images read from
    ``source``: written by the export, and replaced by a later ``vitmsn validate`` on the same directory."""
    n = len(result.evaluated)
    where = f" of {source}" if source is not None else ""
    detail = ("; ".join(result.failures()) or "failed") if not result.passed else (
        f"{len(result.results)} backend/precision result(s) vs PyTorch FP32 on {n} image(s){where}: every gate passed")
    return {"stage": VALIDATION_STAGE, "passed": bool(result.passed), "detail": detail,
            "metrics": {"images": n, "skipped_images": len(result.skipped_images),
                        "results": {r.name: r.passed for r in result.results}, "failures": result.failures()}}


def read_previous(directory: Path) -> dict[str, Any] | None:
    path = directory / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---- report.md --------------------------------------------------------------------------------
def _word(r: dict[str, Any]) -> str:
    return r.get("verdict") or ("passed" if r.get("passed") else "failed")


def verdict_text(r: dict[str, Any]) -> str:
    word = _word(r)
    return word if word == "passed" else f"**{word.upper()}**"


def gate_verdict_text(g: dict[str, Any]) -> str:
    text = verdict_text(g)
    if g.get("verdict") == "inconclusive":
        text += f" ({g['needed']} images would decide)" if g.get("needed") else " (no feasible sample decides)"
    return text


def verdicts_markdown(verdicts: list[dict[str, Any]]) -> list[str]:
    """The current verdict of every precision/backend/flavour the directory ships (manifest.json)."""
    return ["## Verdicts of what ships (manifest.json)", ""] + _table(
        ["backend", "precision", "flavour", "verdict", "images", "by", "file"],
        [[v["backend"], v["precision"], v.get("flavour") or "-", verdict_text(v), str(v["images"].get("count", "")),
          v["by"], v["file"]] for v in verdicts])


def _table(headers: list[str], rows: list[list[str]], right: Collection[int] = ()) -> list[str]:
    """A markdown table, ``|`` escaped in its cells; ``right``: the columns aligned right (numbers)."""
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    rule = "|" + "".join("---:|" if i in right else "---|" for i in range(len(headers)))
    return ["| " + " | ".join(headers) + " |", rule] + ["| " + " | ".join(r) + " |" for r in esc]


def markdown(report: dict[str, Any]) -> str:
    ref, images = report["reference"], report["images"]
    lines = [f"# Accuracy-drift report: {ref.get('source') or ref['checkpoint']}", "",
             f"- result: **{str(report.get('verdict') or ('passed' if report['passed'] else 'failed')).upper()}** "
             f"(this run's drift gates: {'passed' if report['gates_passed'] else 'not all passed'})",
             f"- reference: PyTorch FP32 ({ref['attention']} attention), checkpoint sha256 {ref['checkpoint_sha256'][:16]}...",
             f"- images: {images['evaluated']} compared from {images['root']}, {images['skipped_count']} skipped; "
             f"{images['note']}"]
    if ref.get("accuracy") is not None:
        lines.append(f"- reference accuracy: {fmt(ref['accuracy'], 'pct')} on {images['labelled']} labelled images")
    lines += ["", "## Summary (primary output: " + report["primary_output"] + ")", ""]
    rows = [[r["backend"], result_label(r), verdict_text(r)]
            + [fmt(r["metrics"].get(k), kind) for k, _, kind in SUMMARY_COLUMNS] for r in report["results"]]
    lines += _table(["backend", "precision", "gates"] + [h for _, h, _ in SUMMARY_COLUMNS], rows)
    for c in report.get("checks", []):
        lines += ["", f"- check {c['check']}: {'pass' if c['passed'] else '**FAIL**'}: {c['detail']}"]
    for r in report["results"]:
        lines += ["", f"## {r['backend']} {result_label(r)} ({r['file']})", "", "Gates:", ""]
        lines += _table(["gate", "metric", "value", "95% bound", "threshold", "n", "source", "verdict"],
                        [[g["gate"], g["metric"], fmt(g["value"], "exact"), fmt(g.get("bound"), "exact"),
                          f"{g['op']} {g['threshold']:g}", str(g.get("n", "")), g["source"], gate_verdict_text(g)]
                         for g in r["gates"]])
        lines += ["", "Per output:", ""]
        lines += _table(["output", "max abs", "mean abs", "rel err (mean/max)", "cos min", "cos p1", "cos mean",
                         "top-1", "top-5", "KL mean/max"],
                        [[o, fmt(s.get("max_abs"), "sci"), fmt(s.get("mean_abs"), "sci"),
                          f"{fmt(s.get('rel_l2_mean'), 'sci')} / {fmt(s.get('rel_l2_max'), 'sci')}",
                          fmt(s.get("cosine_min"), "cos"), fmt(s.get("cosine_p1"), "cos"), fmt(s.get("cosine_mean"), "cos"),
                          fmt(s.get("top1_agreement"), "pct"), fmt(s.get("top5_overlap"), "pct"),
                          f"{fmt(s.get('kl_mean'), 'sci')} / {fmt(s.get('kl_max'), 'sci')}"]
                         for o, s in r["outputs"].items()])
        lines += ["", "Worst images:", ""]
        lines += _table(["image", "label", "reference", "this backend", "cosine", "KL"],
                        [[w["image"], str(w.get("label") or ""), prediction_text(w.get("reference")), prediction_text(w.get("prediction")),
                          fmt(w.get("cosine"), "cos"), fmt(w.get("kl"), "sci")] for w in r["worst_images"]])
    if report.get("verdicts"):
        lines += ["", *verdicts_markdown(report["verdicts"])]
    if report.get("sensitivity"):
        lines += ["", *sensitivity_markdown(report["sensitivity"])]
    if report.get("requantization"):
        lines += ["", *requantization_markdown(report["requantization"])]
    if report.get("fewshot"):  # kept from the export's report: a few-shot head's figures
        from vitmsn.export.fewshot.record import fewshot_markdown

        lines += ["", *fewshot_markdown(report["fewshot"])]
    if images["skipped"]:
        lines += ["", f"## Skipped images ({images['skipped_count']})", ""]
        lines += [f"- {s['image']}: {s['reason']}" for s in images["skipped"]]
    if report.get("skipped_backends"):
        lines += ["", "## Backends not run here", ""] + [f"- {s['backend']}: {s['reason']}" for s in report["skipped_backends"]]
    if report.get("stages"):
        lines += ["", "## Export checks", ""]
        lines += _table(["stage", "result", "detail"], [[s["stage"], verdict_text({"verdict": stage_word(s)}), s["detail"]]
                                                        for s in report["stages"]])
    return "\n".join(lines) + "\n"


def result_label(r: dict[str, Any]) -> str:
    """The precision, and the flavour when there is one (``int8 (onnxruntime_cpu)``)."""
    return r["precision"] + (f" ({r['variant']})" if r.get("variant") else "")


def prediction_text(p: dict[str, Any] | None) -> str:
    return f"{p['label']} ({p['score']:.3f})" if p else ""


def sensitivity_markdown(s: dict[str, Any]) -> list[str]:
    lines = [f"## INT8 sensitivity ({s['method']}, {s['images']} calibration images, score: {s['score']})", ""]
    return lines + _table(["rank", "group", "score", "top-1 agree", "cos mean", "Q/DQ nodes"],
                          [[str(i + 1), g["group"], fmt(g["score"], "sci"), fmt(g.get("top1_agreement"), "pct"),
                            fmt(g.get("cosine_mean"), "cos"), str(g["qdq_nodes"])] for i, g in enumerate(s["ranking"])])


def requantization_markdown(r: dict[str, Any]) -> list[str]:
    n = len(r["tries"]) - 1  # try 0 is the graph as first quantized; max_tries counts re-quantizations
    lines = [f"## INT8 re-quantization: {'gate holds' if r['passed'] else '**gate still fails**'} after "
             f"{n} re-quantization{'' if n == 1 else 's'} (at most {r['max_tries']}; try 0 is the graph as first quantized)",
             "", f"- kept in higher precision: {', '.join(r['excluded']) or 'nothing'}",
             f"- speed: {fmt(r.get('images_per_second'))} img/s vs {fmt(r.get('images_per_second_all_int8'))} img/s "
             f"fully quantized and {fmt(r.get('images_per_second_fp32'))} img/s FP32", ""]
    return lines + _table(["try", "excluded", "gate", "metrics", "img/s"],
                          [[str(i), ", ".join(t["excluded"]) or "-", "pass" if t["passed"] else "fail",
                            ", ".join(f"{k} {fmt(v)}" for k, v in t["metrics"].items()), fmt(t.get("images_per_second"))]
                           for i, t in enumerate(r["tries"])])


def write_drift_reports(out: str | Path, result: ValidationResult, verdicts: Any = None) -> dict[str, str]:
    """Write report.json, report.md and report.html into ``out``; return their names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_previous(out) or (read_previous(result.artifacts) if result.artifacts != out else None)
    report = report_dict(result, previous, verdicts)
    write_json_atomic(out / "report.json", report)
    write_bytes_atomic(out / "report.md", markdown(report).encode())
    write_bytes_atomic(out / "report.html", render_html(report, result).encode())
    return {"json": "report.json", "md": "report.md", "html": "report.html"}


# ---- report.html -------------------------------------------------------------------------------
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td.text{text-align:left}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
.pass{color:#17702c;font-weight:600}.fail{color:#b00020;font-weight:700}.na{color:#888}
.worst{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:6px;width:190px;font-size:12px}
.card img{display:block;margin:0 auto 4px}.banner{padding:10px 14px;font-size:18px;border-radius:4px}
.banner.passed{background:#e3f4e6}.banner.failed{background:#fbe3e6}.banner.inconclusive{background:#fdf1d6}
.inconclusive{color:#8a5a00;font-weight:700}"""
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
            "backend": r["backend"], "label": result_label(r), "file": r["file"], "verdict": _word(r), "precision": r["precision"],
            "gates": [{"gate": g["gate"], "metric": g["metric"], "value": fmt(g["value"], "exact"),
                       "bound": fmt(g.get("bound"), "exact"), "n": g.get("n", ""),
                       "threshold": f"{g['op']} {g['threshold']:g}", "source": g["source"], "word": _word(g),
                       "verdict": gate_verdict_text(g).replace("**", "")}
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
        css=CSS, verdict=_word(report),
        reference=ref, images=images,
        reference_accuracy=fmt(ref["accuracy"], "pct") if ref.get("accuracy") is not None else None,
        failures=result.failures(),
        summary={"headers": ["backend", "precision", "gates"] + [h for _, h, _ in SUMMARY_COLUMNS] + ["img/s"],
                 "rows": [{"backend": r["backend"], "label": result_label(r), "verdict": _word(r),
                           "cells": [fmt(r["metrics"].get(k), kind) for k, _, kind in SUMMARY_COLUMNS]
                           + [fmt(r["timing"]["images_per_second"])]} for r in report["results"]]},
        results=results, output_headers=OUTPUT_HEADERS, sensitivity=sensitivity,
        requantization="\n".join(requantization_markdown(report["requantization"])) if report.get("requantization") else None,
        skipped_images=images["skipped"], skipped_backends=report.get("skipped_backends") or [],
        stages=[{**s, "word": stage_word(s)} for s in report.get("stages") or []], fewshot=_fewshot(report.get("fewshot")),
    ) + "\n"


def _fewshot(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few-shot head's section: its figures (report.md's lines) and the confusion-matrix plot."""
    if not block:
        return None
    from vitmsn.export.fewshot.record import fewshot_markdown
    from vitmsn.export.validation.plots import confusion_png

    return {"lines": [line.removeprefix("- ") for line in fewshot_markdown(block)
                      if line.startswith("- ")],
            "plot": _data_uri(confusion_png(block), "image/png"), "classes": block["classes"],
            "per_class": (block.get("cross_validation") or {}).get("per_class_accuracy") or {}}
