"""Transparent images: by default vitmsn loads them as transformers.pipeline("image-classification") does
(load_image: Pillow's convert("RGB"), alpha dropped), records the choice in the manifest, and composites onto a
colour only when the export asks for it (--alpha-background)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vitmsn.cli.export_cmd import command as export_command
from vitmsn.runtime import Predictor
from vitmsn.runtime.images.preprocess import PreprocessConfig

from checkpoints import TINY_CONFIG, save_transformers
from runtime_fixtures import photo

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "export" / "demo" / "checkpoint"


@pytest.fixture(scope="module")
def rgba_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo shape whose transparent half hides bright RGB (white compositing and dropping disagree there)."""
    from vitmsn.export.demo import render
    from vitmsn.export.demo.shapes import image_rng

    rgb = np.asarray(render("star", image_rng(3, "heldout", 3, 0), (224, 224)).convert("RGB")).copy()
    h, w = rgb.shape[:2]
    rgb[:, : w // 2] = (20, 200, 40)
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, : w // 2] = 0
    path = tmp_path_factory.mktemp("alpha") / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return path


def test_pixels_match_load_image_and_the_vit_processor(rgba_png: Path) -> None:
    from transformers import ViTImageProcessorPil
    from transformers.image_utils import load_image

    processor = ViTImageProcessorPil.from_pretrained(str(DEMO_CHECKPOINT))
    expected = processor(load_image(str(rgba_png)), return_tensors="np")["pixel_values"][0]
    block = PreprocessConfig.from_preprocessor_config(json.loads((DEMO_CHECKPOINT / "preprocessor_config.json").read_text())).to_manifest()
    assert block["alpha"] == "drop"
    ours = PreprocessConfig.from_manifest(block)
    assert np.abs(ours(rgba_png) - expected).max() <= 1e-5
    # the same image as a uint8 RGBA array
    assert np.abs(ours(np.asarray(Image.open(rgba_png))) - expected).max() <= 1e-5


def test_predictions_match_the_transformers_pipeline(demo_artifacts: Path, rgba_png: Path) -> None:
    from transformers import pipeline

    assert json.loads((demo_artifacts / "manifest.json").read_text())["preprocess"]["alpha"] == "drop"
    hf = {p["label"]: p["score"] for p in pipeline("image-classification", model=str(DEMO_CHECKPOINT))(str(rgba_png), top_k=8)}
    with Predictor.from_artifacts(demo_artifacts, backend="onnxruntime", precision="fp32") as p:
        ours = dict(p.predict([rgba_png], top_k=8)[0])
        white = dict(p.predict([Image.alpha_composite(Image.new("RGBA", Image.open(rgba_png).size, "white"),
                                                      Image.open(rgba_png)).convert("RGB")], top_k=8)[0])
    assert max(abs(hf[k] - ours[k]) for k in hf) <= 1e-4, (hf, ours)
    # the test means something: compositing onto white would have disagreed with the pipeline
    assert max(abs(hf[k] - white[k]) for k in hf) > 1e-2


def test_alpha_background_is_recorded_and_used(tmp_path: Path, rgba_png: Path) -> None:
    save_transformers(tmp_path / "ck", **TINY_CONFIG)
    out = tmp_path / "o"
    result = CliRunner().invoke(export_command, ["--model", str(tmp_path / "ck"), "--out", str(out), "--engine", "skip",
                                                 "--no-fp32-cpu", "--alpha-background", "0,0,255"])
    assert result.exit_code == 0, result.output
    block = json.loads((out / "manifest.json").read_text())["preprocess"]
    assert block["alpha"] == "composite" and block["alpha_background"] == [0, 0, 255]
    pre = PreprocessConfig.from_manifest(block)
    rgba = Image.open(rgba_png)
    on_blue = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 255, 255)), rgba).convert("RGB")
    assert np.array_equal(pre.pixels(rgba_png), pre.pixels(on_blue))
    assert not np.array_equal(pre.pixels(rgba_png), dataclasses.replace(pre, alpha_background=None).pixels(rgba_png))


def test_manifest_without_the_record_keeps_white_compositing(rgba_png: Path) -> None:
    block = PreprocessConfig(224, 224).to_manifest()
    for key in ("alpha", "alpha_background"):
        block.pop(key, None)
    assert PreprocessConfig.from_manifest(block).alpha_background == (255, 255, 255)


@pytest.mark.parametrize("value", ["255,255", "0,0,256", "red"])
def test_bad_alpha_background_exits_2(value: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(export_command, ["--model", "demo", "--out", str(tmp_path / "o"), "--alpha-background", value])
    assert result.exit_code == 2 and "--alpha-background" in result.output and not (tmp_path / "o").exists()
