"""report.json / report.md / report.html: schema, merging with the export report, and rendering.

The HTML is rendered in a real headless browser (Debian's ``chromium``) when one is installed;
the plots are always rendered to PNG and decoded, so there is evidence without a browser too.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from validation_fixtures import calib_images, demo_int8_artifacts, few_images  # noqa: F401

from vitmsn.export.validation.drift_report import report_dict, write_drift_reports
from vitmsn.export.validation.plots import histogram_png, sensitivity_png
from vitmsn.export.validation.validate import validate_artifacts

BAR_BLUE = (0x3B, 0x6E, 0xA8)
BANNER = {"passed": (0xE3, 0xF4, 0xE6), "failed": (0xFB, 0xE3, 0xE6), "inconclusive": (0xFD, 0xF1, 0xD6)}


@pytest.fixture(scope="module")
def validation(demo_int8_artifacts, few_images):
    return validate_artifacts(demo_int8_artifacts, few_images, progress=False)


@pytest.fixture(scope="module")
def written(validation, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    shutil.copy(validation.artifacts / "report.json", out / "report.json")  # the export's report, with its stages
    write_drift_reports(out, validation)
    return out


def _non_blank(png: bytes, min_size: tuple[int, int]) -> np.ndarray:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    assert im.width >= min_size[0] and im.height >= min_size[1]
    a = np.asarray(im)
    ink = (a < 245).any(axis=2).mean()
    assert ink > 0.01, f"only {ink:.2%} of the pixels are not white"
    return a


def _has_colour(a: np.ndarray, rgb: tuple[int, int, int], tol: int = 12, min_pixels: int = 50) -> bool:
    return int((np.abs(a.astype(int) - rgb).max(axis=2) <= tol).sum()) >= min_pixels


def test_histograms_render_to_png(validation):
    for r in validation.results:
        a = _non_blank(histogram_png(r, validation.primary_output), (400, 150))
        assert _has_colour(a, BAR_BLUE), f"no histogram bars drawn for {r.precision}"


def test_sensitivity_chart_renders_to_png():
    s = {"score": "mean KL", "ranking": [{"group": f"block:{i}", "score": 10.0 ** -i} for i in range(6)]}
    a = _non_blank(sensitivity_png(s), (300, 100))
    assert _has_colour(a, (0xA8, 0x4B, 0x3B))


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href"):
                self.refs.append((tag, v or ""))


def test_html_is_self_contained(written, validation):
    html = (written / "report.html").read_text()
    parser = _Refs()
    parser.feed(html)
    images = [v for t, v in parser.refs if t == "img"]
    # one histogram per result, one thumbnail per worst image
    assert len(images) == len(validation.results) + sum(len(r.worst_images) for r in validation.results)
    assert all(v.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for _, v in parser.refs)
    assert "<link" not in html and "<script" not in html


def test_report_json_keeps_export_stages_and_contract_fields(written, validation):
    report = json.loads((written / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]][:3] == ["onnx_checker", "io_signature", "onnxruntime_parity"]
    assert report["reference"]["backend"] == "pytorch" and report["reference"]["precision"] == "fp32"
    assert report["passed"] == (validation.passed and all(s["passed"] for s in report["stages"]))
    for r in report["results"]:
        assert {"backend", "precision", "passed", "metrics", "gates", "worst_images"} <= set(r)
        for w in r["worst_images"]:
            assert (Path(report["images"]["root"]) / w["image"]).is_file()
            assert w["reference"]["label"] and w["prediction"]["label"]


def test_merge_rules():
    """A failed export stage fails the report; an older validation's figures never survive."""

    class Fake:
        def to_dict(self):
            return {"reference": {}, "passed": True, "results": []}

    previous = {"stages": [{"stage": "onnx_checker", "passed": False}], "sensitivity": {"stale": True}, "custom": 1}
    merged = report_dict(Fake(), previous)  # type: ignore[arg-type]
    assert merged["passed"] is False and merged["gates_passed"] is True
    assert "sensitivity" not in merged and merged["custom"] == 1 and merged["stages"] == previous["stages"]


def test_markdown_has_a_row_per_result(written, validation):
    md = (written / "report.md").read_text()
    for r in validation.results:
        assert f"| {r.backend} | {r.precision}" in md
    # each row carries its own verdict and the figure its gate read, as the validation measured it
    for r in validation.results:
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
                if line.startswith(f"| {r.backend} | {r.precision}")]
        verdict = r.verdict if r.passed else f"**{r.verdict.upper()}**"  # passed, **FAILED**, **INCONCLUSIVE**
        # the row with this result's gated figure (to the gate's precision) carries its verdict
        assert any(cells[2] == verdict and f"{r.metrics['cosine_min']:.6f}" in cells for cells in rows), (r, rows)


def test_html_renders_in_headless_chromium(written, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert browser, "no headless Chromium here: apt-get install -y chromium (.ci/run installs it)"
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1200,12000", f"--screenshot={shot}", (written / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    a = _non_blank(shot.read_bytes(), (1200, 12000))
    # the banner is painted in its verdict's colour (16 images: every gate inconclusive, amber) and the
    # histogram bars are drawn, below the gate list and the per-result tables
    assert json.loads((written / "report.json").read_text())["verdict"] == "inconclusive"
    assert _has_colour(a, BANNER["inconclusive"], tol=4, min_pixels=2000)
    assert _has_colour(a, BAR_BLUE)


def test_every_verdict_word_in_the_html_is_report_jsons(written, validation):
    """16 images decide nothing: the page says INCONCLUSIVE wherever report.json does, never FAILED."""
    report = json.loads((written / "report.json").read_text())
    html = (written / "report.html").read_text()
    assert report["verdict"] == "inconclusive" and {r["verdict"] for r in report["results"]} == {"inconclusive"}
    assert '<div class="banner inconclusive">INCONCLUSIVE:' in html
    assert "FAILED" not in html and ">FAIL<" not in html
    # the export's drift stages (8 held-out images) are inconclusive too; its other checks passed
    assert html.count('<span class="inconclusive">INCONCLUSIVE</span>') == len(report["results"]) * 2 + sum(
        s["stage"].startswith("drift_") for s in report["stages"])
    md = (written / "report.md").read_text()
    assert "**FAILED**" not in md and "**FAIL**" not in md


def test_html_escapes_names_from_the_images_folder(demo_int8_artifacts, tmp_path):
    """An image path is text, never markup: a file named like a tag reaches report.html escaped."""
    from vitmsn.export.demo import write_dataset

    images = tmp_path / "images"
    write_dataset(images, per_class=1, split="heldout")
    first = sorted(images.rglob("*.jpg"))[0]
    hostile = first.with_name("<img src=x onerror=alert(1)>.jpg")
    first.rename(hostile)
    out = tmp_path / "report"
    write_drift_reports(out, validate_artifacts(demo_int8_artifacts, images, progress=False, precisions=["fp32"]))
    html = (out / "report.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in html and "<img src=x" not in html
