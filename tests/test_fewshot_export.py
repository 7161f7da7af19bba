"""vitmsn-export --fewshot end to end on the demo backbone: a few shots of classes it never saw -> an exported,
validated classifier whose checkpoint transformers loads and agrees with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitmsn.cli import group
from vitmsn.export.demo.shapes import write_dataset
from vitmsn.export.validation.stats import wilson
from vitmsn.fewshot import C_GRID
from vitmsn.runtime import Predictor
from vitmsn.runtime.manifest import Manifest

CLASSES = ("chevron", "heart", "pentagon")
SHOTS = 4
HELD = 55  # held-out images per class


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from vitmsn.export.pipeline import ExportOptions, run_export

    root = tmp_path_factory.mktemp("fewshot_export")
    write_dataset(root / "shots", per_class=SHOTS, split="fewshot", labels=CLASSES)
    # 55 per class: 165 labelled held-out images, enough for every gate to decide when all of them agree (the
    # accuracy drop <= 0.01 needs 163, top-1 >= 0.97 88, the cosine 5th percentile 59); fewer end inconclusive
    write_dataset(root / "held", per_class=HELD, split="fewshot-heldout", labels=CLASSES)
    out = root / "artifacts"
    run_export(ExportOptions(model="demo", out=out, engine="skip", fewshot=root / "shots", replace_head=True,
                             validate_images=root / "held"))
    return out, root / "held"


def test_every_file_is_named_with_its_hash_checkpoint_included(fewshot_run):
    out, _ = fewshot_run
    manifest = Manifest.load(out)
    assert manifest.checkpoint is not None and manifest.checkpoint.directory == "checkpoint"
    assert {f.file for f in manifest.checkpoint.files} == {
        "checkpoint/config.json", "checkpoint/model.safetensors", "checkpoint/preprocessor_config.json"}
    assert {f.file for f in manifest.checkpoint.files} <= {f.file for f in manifest.files()}  # checked with the rest
    assert manifest.unnamed_files() == []
    checks = {c.named.file: c for c in manifest.check_files()}
    assert all(checks[f.file].status == "ok" for f in manifest.checkpoint.files) and all(c.ok for c in checks.values())
    assert manifest.labels == dict(enumerate(CLASSES))  # sorted class names, from the fitted classes


def test_a_changed_checkpoint_file_fails_verification(fewshot_run, tmp_path):
    import shutil

    out = Path(shutil.copytree(fewshot_run[0], tmp_path / "copy"))
    config = out / "checkpoint" / "config.json"
    config.write_text(config.read_text().replace("heart", "hearts"))
    bad = [c for c in Manifest.load(out).check_files() if not c.ok]
    assert [c.named.file for c in bad] == ["checkpoint/config.json"] and bad[0].status == "corrupt"


def test_manifest_records_what_a_user_needs_to_trust_the_head(fewshot_run):
    out, _ = fewshot_run
    block = json.loads((out / "manifest.json").read_text())["fewshot"]
    assert block["shots_per_class"] == {c: SHOTS for c in CLASSES} and block["classes"] == list(CLASSES)
    assert block["C"] in C_GRID and "cross-validation" in block["C_choice"]
    cv = block["cross_validation"]
    assert cv["n"] == SHOTS * len(CLASSES) and cv["folds"] == SHOTS
    assert np.sum(cv["confusion"]) == cv["n"] and np.trace(cv["confusion"]) == cv["correct"]
    assert cv["accuracy_lower_bound"] == pytest.approx(wilson(cv["correct"], cv["n"]).lower, abs=1e-6)
    assert cv["accuracy_lower_bound"] < cv["accuracy"]
    assert set(cv["per_class_accuracy"]) == set(CLASSES) and block["fit_seconds"] >= 0
    report = json.loads((out / "report.json").read_text())
    assert report["fewshot"] == block
    html = (out / "report.html").read_text()
    assert 'alt="confusion matrix" src="data:image/png;base64,' in html
    assert "## Few-shot head" in (out / "report.md").read_text()


def _held_images(held: Path) -> tuple[list[Path], list[str]]:
    files = sorted(held.rglob("*.*"))
    return files, [f.parent.name for f in files]


def test_transformers_loads_the_checkpoint_and_agrees_with_the_onnx_graph(fewshot_run):
    from transformers import ViTMSNForImageClassification, pipeline

    out, held = fewshot_run
    files, _ = _held_images(held)
    model = ViTMSNForImageClassification.from_pretrained(out / "checkpoint").eval()
    assert model.config.id2label == dict(enumerate(CLASSES))
    with Predictor.from_artifacts(out, backend="onnxruntime", precision="fp32") as p:
        pixels = p.preprocess.batch(files)
        onnx_logits = p.infer(pixels)["logits"]
        ours = [preds[0][0] for preds in p.predict(files, top_k=1)]
    with torch.no_grad():
        hf_logits = model(pixel_values=torch.from_numpy(pixels)).logits.numpy()
    np.testing.assert_allclose(onnx_logits, hf_logits, atol=1e-4)
    classify = pipeline("image-classification", model=str(out / "checkpoint"))
    theirs = [r[0]["label"] for r in classify([Image.open(f) for f in files], top_k=1)]
    assert theirs == ours


def test_validate_reports_held_out_accuracy_from_the_folder_names(fewshot_run, tmp_path):
    from transformers import ViTMSNForImageClassification

    out, held = fewshot_run
    files, truth = _held_images(held)
    model = ViTMSNForImageClassification.from_pretrained(out / "checkpoint").eval()
    with Predictor.from_artifacts(out, backend="onnxruntime", precision="fp32") as p:
        pixels = p.preprocess.batch(files)
    with torch.no_grad():
        top1 = model(pixel_values=torch.from_numpy(pixels)).logits.argmax(1).tolist()
    expected = np.mean([CLASSES[i] == t for i, t in zip(top1, truth)])
    # the export's own drift validation, and a later `vitmsn validate` that finds the reference in checkpoint/
    exported = json.loads((out / "report.json").read_text())
    result = CliRunner().invoke(group, ["validate", str(out), "--images", str(held), "--out", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    later = json.loads((tmp_path / "v" / "report.json").read_text())
    for report in (exported, later):
        fp32 = [r for r in report["results"] if r["precision"] == "fp32"]
        assert fp32 and all(r["metrics"]["accuracy"] == pytest.approx(expected) for r in fp32)


def test_predict_answers_with_the_folder_names(fewshot_run):
    out, held = fewshot_run
    files, _ = _held_images(held)
    result = CliRunner().invoke(group, ["predict", str(out), str(files[0]), "--json", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    labels = [p["label"] for p in json.loads(result.stdout)[0]["predictions"]]
    assert sorted(labels) == list(CLASSES)
