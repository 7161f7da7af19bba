"""``vitmsn validate`` end to end on the trained demo model: figures, gates, exit codes, inputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from validation_fixtures import (PLANTED_BLOCK, calib_images, copy_artifacts, demo_int8_artifacts,  # noqa: F401
                                 few_images, planted_artifacts)

from vitmsn.cli.validate import command


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def independent_figures(artifacts: Path, images: Path, precision: str) -> dict[str, float]:
    """Top-1 agreement and accuracies computed without vitmsn: PIL + numpy preprocessing from the
    checkpoint's preprocessor_config.json, transformers' ViTMSN as the reference, raw ONNX Runtime."""
    import onnxruntime as ort
    import torch
    from PIL import Image
    from transformers import ViTMSNForImageClassification

    manifest = json.loads((artifacts / "manifest.json").read_text())
    checkpoint = Path(manifest["model"]["directory"])
    cfg = json.loads((checkpoint / "preprocessor_config.json").read_text())
    mean, std = (np.array(cfg[k], dtype=np.float32).reshape(3, 1, 1) for k in ("image_mean", "image_std"))
    files = sorted(p for p in images.rglob("*") if p.suffix in (".jpg", ".png"))
    x = np.stack([
        (np.asarray(Image.open(f).convert("RGB").resize((cfg["size"]["width"], cfg["size"]["height"]), cfg["resample"],
                                                       reducing_gap=None)).transpose(2, 0, 1).astype(np.float64)
         * cfg["rescale_factor"]).astype(np.float32) - mean for f in files]) / std
    model = ViTMSNForImageClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x.astype(np.float32))).logits.numpy()
    session = ort.InferenceSession(str(artifacts / manifest["precisions"][precision]["file"]),
                                   providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"pixel_values": x.astype(np.float32)})[0]
    label_of = {v: int(k) for k, v in model.config.id2label.items()}
    truth = np.array([label_of[f.parent.name] for f in files])
    return {"images": len(files), "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
            "accuracy": float((got.argmax(1) == truth).mean()), "accuracy_reference": float((ref.argmax(1) == truth).mean())}


def test_demo_int8_report_agrees_with_independent_computation(demo_int8_artifacts, heldout_images, tmp_path):
    out = tmp_path / "report"
    result = run_cli(demo_int8_artifacts, "--images", heldout_images, "--out", out)
    report = json.loads((out / "report.json").read_text())
    # OpenVINO's INT8 kernels differ by CPU (an AVX2 EPYC without VNNI: agreement bound 0.937, inconclusive), so its
    # verdict is this CPU's; ONNX Runtime's rows must pass, and the exit code says what the report says
    assert result.exit_code == (0 if report["gates_passed"] else 1), result.output
    assert all(r["passed"] for r in report["results"] if r["backend"] == "onnxruntime"), result.output
    by_precision = {r["precision"]: r for r in report["results"] if not r["variant"]}
    # every graph and CPU flavour was run: both INT8 graphs, the FP32 graph and its ONNX Runtime-fused flavour
    assert {(r["precision"], r["variant"]) for r in report["results"] if r["backend"] == "onnxruntime"} == {
        ("fp32", ""), ("fp32", "onnxruntime_optimized"), ("int8", ""), ("int8", "onnxruntime_cpu")}
    # and OpenVINO (installed with the test extra) on the FP32 graph and the Q/DQ graph
    assert {r["precision"] for r in report["results"] if r["backend"] == "openvino"} == {"fp32", "int8"}
    assert set(by_precision) == {"fp32", "int8"}
    assert "validate" in result.stderr  # progress was shown

    expected = independent_figures(demo_int8_artifacts, heldout_images, "int8")
    m = by_precision["int8"]["metrics"]
    assert m["images"] == expected["images"] == report["images"]["evaluated"]
    # transformers and our model differ by ~1e-6 in the logits: an exact tie could flip, nothing more
    n = expected["images"]
    assert m["top1_agreement"] == pytest.approx(expected["top1_agreement"], abs=1.01 / n)
    assert m["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)  # same graph, same tensors
    assert m["accuracy_reference"] == pytest.approx(expected["accuracy_reference"], abs=1.01 / n)
    assert report["reference"]["accuracy"] == m["accuracy_reference"]
    print(f"\ndemo int8 on {n} held-out images: report agreement {m['top1_agreement']:.4f} accuracy {m['accuracy']:.4f} "
          f"(ref {m['accuracy_reference']:.4f}); independent {expected}")

    md = (out / "report.md").read_text()
    assert f"{100 * m['top1_agreement']:.2f}%" in md and f"{100 * m['accuracy']:.2f}%" in md
    html = (out / "report.html").read_text()
    assert f"{100 * m['top1_agreement']:.2f}%" in html and "data:image/png;base64," in html
    # every metric the contract names is there, for every result
    for r in report["results"]:
        assert {"top1_agreement", "cosine_min", "cosine_mean", "max_abs", "accuracy", "accuracy_reference"} <= set(r["metrics"])
        assert r["gates"] and r["worst_images"] and {"logits", "embedding"} == set(r["outputs"])
    # the export's staged checks were kept
    assert [s["stage"] for s in report["stages"]][:3] == ["onnx_checker", "io_signature", "onnxruntime_parity"]


def test_damaged_int8_fails_the_gate(planted_artifacts, few_images, tmp_path):
    result = run_cli(planted_artifacts, "--images", few_images, "--out", tmp_path, "--quiet")
    assert result.exit_code == 1, result.output
    assert "onnxruntime int8:" in result.stderr and "FAILED" in result.stderr
    assert ("cosine_min = " in result.stderr) or ("top1_agreement = " in result.stderr)
    report = json.loads((tmp_path / "report.json").read_text())
    results = {r["precision"]: r for r in report["results"] if not r["variant"]}
    # 16 images: fp32 cannot be proven (inconclusive), but nothing fails it; int8's damage is decided
    assert results["fp32"]["verdict"] == "inconclusive" and results["int8"]["verdict"] == "failed"
    assert not report["passed"] and report["verdict"] == "failed"
    failed = [g for g in results["int8"]["gates"] if not g["passed"]]
    assert failed and all(g["value"] is None or g["value"] < g["threshold"] for g in failed if g["op"] == ">=")


def test_a_batch_that_cannot_fit_runs_in_batches_that_do(demo_int8_artifacts, few_images, tmp_path):
    """--batch-size 10 million would need terabytes of activations: validate says so and runs what fits, every
    image still compared."""
    result = run_cli(demo_int8_artifacts, "--images", few_images, "--precision", "fp32", "--batch-size", 10_000_000,
                     "--out", tmp_path)
    assert result.exit_code in (0, 1), result.output  # 16 images: the verdict itself is not this test's subject
    assert re.search(r"batch 10000000 does not fit \(.*GB.*usable.*\); \d+ images at a time instead", result.stderr), \
        result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"]["evaluated"] == 16 and 8 <= report["reference"]["batch_size"] < 10_000_000


def test_impossible_threshold_exits_1(demo_artifacts, few_images, tmp_path):
    result = run_cli(demo_artifacts, "--images", few_images, "--out", tmp_path, "--quiet", "--min-top1-agreement", "1.01")
    assert result.exit_code == 1
    assert "onnxruntime fp32: top1_agreement = 1 (95% lower bound" in result.stderr
    assert "gate >= 1.01: failed" in result.stderr  # even the upper bound (1) misses it


def test_per_precision_threshold_applies_only_there(demo_int8_artifacts, few_images, tmp_path):
    result = run_cli(demo_int8_artifacts, "--images", few_images, "--out", tmp_path, "--quiet",
                     "--min-cosine", "int8=1.5")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "report.json").read_text())
    gates = {r["precision"]: {g["gate"]: g for g in r["gates"]} for r in report["results"] if not r["variant"]}
    assert gates["int8"]["min_cosine"]["threshold"] == 1.5 and gates["int8"]["min_cosine"]["source"] == "override"
    assert gates["fp32"]["min_cosine"]["threshold"] == 0.99999 and gates["int8"]["min_cosine"]["verdict"] == "failed"
    # 16 images: the 5th percentile has no lower bound below 59 images, so fp32's cosine is not decided
    assert gates["fp32"]["min_cosine"]["verdict"] == "inconclusive" and gates["fp32"]["min_cosine"]["needed"] == 59


def test_wrong_normalization_in_the_artifacts_fails(demo_artifacts, few_images, tmp_path):
    art = copy_artifacts(demo_artifacts, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["preprocess"]["image_mean"] = [0.5, 0.5, 0.5]
    data["preprocess"]["image_std"] = [0.5, 0.5, 0.5]
    (art / "manifest.json").write_text(json.dumps(data))
    result = run_cli(art, "--images", few_images, "--quiet")
    assert result.exit_code == 1
    assert "preprocess_matches_checkpoint" in result.stderr
    # the reports written into the artifacts directory are recorded in its manifest: it still verifies
    from vitmsn.runtime.manifest import Manifest

    checks = Manifest.load(art).check_files()
    assert [c.named.file for c in checks if c.status != "ok"] == []
    assert {"report.json", "report.md", "report.html"} <= {c.named.file for c in checks}


def test_checkpoint_that_is_not_the_exported_one_exits_2(demo_artifacts, few_images, tmp_path):
    art = copy_artifacts(demo_artifacts, tmp_path / "art")
    data = json.loads((art / "manifest.json").read_text())
    data["model"]["checkpoint_sha256"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(data))
    result = run_cli(art, "--images", few_images, "--quiet")
    assert result.exit_code == 2
    assert "does not match the manifest's model.checkpoint_sha256" in result.stderr


def test_unreadable_images_are_listed_skipped_and_counted(demo_artifacts, few_images, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(few_images, images)
    (images / "circle" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "square" / "empty.png").write_bytes(b"")
    result = run_cli(demo_artifacts, "--images", images, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 1 and "INCONCLUSIVE: " in result.stderr, result.output  # 16 images decide nothing
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["images"]["skipped_count"] == 2 and report["images"]["evaluated"] == 16
    assert sorted(s["image"] for s in report["images"]["skipped"]) == ["circle/broken.jpg", "square/empty.png"]
    assert "skipped circle/broken.jpg" in result.stderr
    assert "circle/broken.jpg" in (tmp_path / "r" / "report.md").read_text()


def test_labels_file_gives_the_same_accuracy_as_folders(demo_artifacts, few_images, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["path,label"]
    for f in sorted(few_images.rglob("*.*")):
        shutil.copy(f, flat / f.name)
        rows.append(f"{f.name},{f.parent.name}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert run_cli(demo_artifacts, "--images", flat, "--labels", tmp_path / "labels.csv", "--out", tmp_path / "a",
                   "--quiet").exit_code == 1  # 16 images: inconclusive, but the figures are what is compared
    assert run_cli(demo_artifacts, "--images", few_images, "--out", tmp_path / "b", "--quiet").exit_code == 1
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a["images"]["label_source"] == "labels-file" and b["images"]["label_source"] == "folders"
    assert a["results"][0]["metrics"]["accuracy"] == b["results"][0]["metrics"]["accuracy"] is not None

    (tmp_path / "bad.csv").write_text(f"{rows[1].split(',')[0]},not-a-label\n")
    bad = run_cli(demo_artifacts, "--images", flat, "--labels", tmp_path / "bad.csv", "--quiet")
    assert bad.exit_code == 2 and "line 1" in bad.stderr and "not-a-label" in bad.stderr
    sparse = tmp_path / "huge.csv"  # 4 GB that takes no disk: read with a cap, refused
    with open(sparse, "wb") as fh:
        fh.truncate(4 << 30)
    huge = run_cli(demo_artifacts, "--images", flat, "--labels", sparse, "--quiet")
    assert huge.exit_code == 2 and f"--labels {sparse}: more than" in huge.stderr, huge.stderr
    device = run_cli(demo_artifacts, "--images", flat, "--labels", "/dev/zero", "--quiet")
    assert device.exit_code == 2 and "--labels /dev/zero: not a regular file" in device.stderr, device.stderr


def test_labels_file_edge_cases_read_as_csv_means_or_refused(tmp_path, monkeypatch):
    """--labels as a CSV tool writes it (BOM, CRLF, quoted commas, any character in a name), paths as `find .`
    or an absolute listing give them; refused, exit-2 style, when it would make the ground truth wrong or empty."""
    from PIL import Image

    from export.validation.inputs import image_set
    from vitmsn.core.errors import InputError

    names = ["cat/1.jpg", "cat/a,b.jpg", "dog/x\u2028y.jpg", "dog/2.jpg"]
    for name in names:
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "imgs" / name)
    monkeypatch.chdir(tmp_path)  # --images given relative, as users type it
    labels = {0: "cat", 1: "dog"}

    def read(text: str, encoding: str = "utf-8") -> list[int]:
        (tmp_path / "l.csv").write_bytes(text.encode(encoding))
        return image_set("imgs", labels, "l.csv").labels.tolist()  # files sorted: cat/1, cat/a,b, dog/2, dog/x..y

    good = ("\ufeffpath,label\r\n./cat/1.jpg,cat\r\n\"cat/a,b.jpg\",0\r\ndog/x\u2028y.jpg,dog\r\n"
            f"{tmp_path / 'imgs' / 'dog' / '2.jpg'},1\r\n")
    assert read(good) == [0, 0, 1, 1]
    refused = {"cat/1.jpg,cat\ncat/1.jpg,dog\n": "labelled 'dog' here but 'cat' on line 1",
               "cat/1.jpg,\u00b2\n": "label '²' is not one of",
               "path,label\n": "no 'path,label' rows", "": "no 'path,label' rows",
               "../imgs/cat/1.jpg,cat\n": "is not an image under --images",
               f"{tmp_path / 'imgs'}/../l.csv,cat\n": "is not inside --images",
               "cat/1.jpg,cat\x00\n": "line 1"}
    for text, message in refused.items():
        with pytest.raises(InputError, match=re.escape(message)):
            read(text)
    with pytest.raises(InputError, match="save it as UTF-8"):
        read("cat/1.jpg,cat\n".replace("cat/1", "cat/\u00e9"), "latin-1")


def test_folders_partly_named_as_labels_are_refused(demo_artifacts, few_images, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(few_images, images)
    (images / "circle").rename(images / "circles")
    result = run_cli(demo_artifacts, "--images", images, "--quiet")
    assert result.exit_code == 2 and "circles" in result.stderr


def test_bad_usage_exits_2(demo_artifacts, few_images, tmp_path):
    assert run_cli(tmp_path / "nowhere", "--images", few_images).exit_code == 2
    assert run_cli(demo_artifacts, "--images", tmp_path / "nowhere").exit_code == 2
    assert run_cli(demo_artifacts, "--images", few_images, "--precision", "int8").exit_code == 2  # not exported
    assert run_cli(demo_artifacts, "--images", few_images, "--min-cosine", "fp64=0.9").exit_code == 2


def test_config_file_sets_the_gate(demo_artifacts, few_images, tmp_path, monkeypatch):
    import sys

    from vitmsn.cli import main

    (tmp_path / "vitmsn.toml").write_text(f'[validate]\nimages = "{few_images}"\nmin-top1-agreement = 1.01\nquiet = true\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vitmsn", "validate", str(demo_artifacts), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    gate = json.loads((tmp_path / "r" / "report.json").read_text())["results"][0]["gates"][0]
    assert gate["threshold"] == 1.01 and gate["source"] == "override"


def test_feature_extractor_is_gated_on_embedding_cosine(tmp_path):
    from checkpoints import save_transformers
    from PIL import Image

    from vitmsn.export.pipeline import ExportOptions, run_export

    save_transformers(tmp_path / "ck", classifier=False)
    run_export(ExportOptions(model=str(tmp_path / "ck"), out=tmp_path / "art", engine="skip"))
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(60):  # the cosine gate's 5th percentile needs 59 images to be decided
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    result = run_cli(tmp_path / "art", "--images", tmp_path / "img", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "art" / "report.json").read_text())
    r = report["results"][0]
    assert report["primary_output"] == "embedding" and r["metrics"]["output"] == "embedding"
    assert [g["gate"] for g in r["gates"]] == ["min_cosine"] and "top1_agreement" not in r["metrics"]
    assert set(r["outputs"]) == {"last_hidden_state", "embedding"}
