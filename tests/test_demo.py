"""The demo: the procedural shape renderer, the shipped checkpoint, and the training script.

Tolerances: our PyTorch model against transformers' on the same pixels, max abs logit
difference <= 1e-4 (both FP32 on CPU, same weights, only op order differs). Accuracy: >= 95%
top-1 on held-out images written here with a seed the training never used.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitmsn.export.demo import CHECKPOINT_DIR, LABELS, write_dataset

# A held-out seed that training_report.json's evaluation did not use: independent evidence.
TEST_SEED = 31337
MAX_WEIGHTS_BYTES = 10_000_000
MIN_HELDOUT_ACCURACY = 0.95
PARITY_ATOL = 1e-4


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _config() -> dict:
    return json.loads((CHECKPOINT_DIR / "config.json").read_text())


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_dataset(tmp_path_factory.mktemp("heldout"), per_class=10, seed=TEST_SEED, split="heldout")


@pytest.fixture(scope="module")
def checkpoint():
    from vitmsn.export.fp32.checkpoint import load_checkpoint

    return load_checkpoint("demo")


# ---- the renderer -------------------------------------------------------------------------------
def test_write_dataset_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", per_class=3, seed=5, split="heldout")
    b = write_dataset(tmp_path / "b", per_class=3, seed=5, split="heldout")
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_write_dataset_differs_across_seeds_and_splits(tmp_path: Path) -> None:
    base = write_dataset(tmp_path / "base", per_class=2, seed=5, split="heldout")
    other_seed = write_dataset(tmp_path / "seed", per_class=2, seed=6, split="heldout")
    train = write_dataset(tmp_path / "train", per_class=2, seed=5, split="train")
    for pa, pb, pc in zip(base, other_seed, train):
        assert pa.read_bytes() != pb.read_bytes(), pa.name
        assert pa.read_bytes() != pc.read_bytes(), pa.name


def test_write_dataset_layout_and_real_files(tmp_path: Path) -> None:
    per_class = 4
    paths = write_dataset(tmp_path, per_class=per_class, seed=1, split="heldout")
    assert sorted(paths) == _files(tmp_path)
    assert sorted(d.name for d in tmp_path.iterdir()) == sorted(LABELS)
    formats, sizes = set(), set()
    for label in LABELS:
        files = sorted((tmp_path / label).iterdir())
        assert len(files) == per_class
        assert {f.suffix for f in files} == {".jpg", ".png"}, label
    for path in paths:
        with Image.open(path) as im:
            im.load()
            expected = {".jpg": "JPEG", ".png": "PNG"}[path.suffix]
            assert im.format == expected, path
            assert im.mode == "RGB", path
            assert 200 <= im.width <= 320 and 200 <= im.height <= 320, (path, im.size)
            formats.add(im.format)
            sizes.add(im.size)
    assert formats == {"JPEG", "PNG"}
    assert any(w != h for w, h in sizes), "source images should not all be square"
    assert len(sizes) > len(paths) // 2, "source sizes should vary"


def test_write_dataset_single_format(tmp_path: Path) -> None:
    paths = write_dataset(tmp_path, per_class=2, seed=1, formats=("png",), labels=("ring", "star"))
    assert sorted(d.name for d in tmp_path.iterdir()) == ["ring", "star"]
    assert {p.suffix for p in paths} == {".png"}


def test_importing_the_demo_package_does_not_import_torch() -> None:
    code = "import sys, vitmsn.export.demo; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---- the shipped checkpoint ---------------------------------------------------------------------
def test_checkpoint_files_and_size() -> None:
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "training_report.json"):
        assert (CHECKPOINT_DIR / name).is_file(), name
    size = (CHECKPOINT_DIR / "model.safetensors").stat().st_size
    assert size <= MAX_WEIGHTS_BYTES, f"model.safetensors is {size} bytes"


def test_checkpoint_config_is_a_vitmsn_classifier_for_the_shape_classes() -> None:
    config = _config()
    assert config["model_type"] == "vit_msn"
    assert config["architectures"] == ["ViTMSNForImageClassification"]
    assert (config["image_size"], config["patch_size"], config["num_channels"]) == (224, 16, 3)
    assert sorted(config["id2label"].values()) == sorted(LABELS)
    assert {v: int(k) for k, v in config["id2label"].items()} == config["label2id"]
    pre = json.loads((CHECKPOINT_DIR / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 224, "width": 224}
    assert pre["resample"] == 2
    assert pre["image_mean"] == [0.485, 0.456, 0.406] and pre["image_std"] == [0.229, 0.224, 0.225]
    assert pre["do_rescale"] and pre["do_normalize"] and abs(pre["rescale_factor"] - 1 / 255) < 1e-12


def test_class_folders_are_the_checkpoint_labels(heldout: list[Path]) -> None:
    assert {p.parent.name for p in heldout} == set(_config()["id2label"].values())


def test_training_report_matches_the_weights() -> None:
    report = json.loads((CHECKPOINT_DIR / "training_report.json").read_text())
    digest = hashlib.sha256((CHECKPOINT_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert report["model_safetensors_sha256"] == digest, "model.safetensors changed without re-training"


def test_weights_use_transformers_4x_key_names() -> None:
    from safetensors import safe_open

    with safe_open(str(CHECKPOINT_DIR / "model.safetensors"), "np") as f:
        keys = set(f.keys())
    assert "classifier.weight" in keys and "vit.embeddings.cls_token" in keys
    assert "vit.encoder.layer.0.attention.attention.query.weight" in keys
    assert not [k for k in keys if re.search(r"(q_proj|k_proj|v_proj|o_proj|mlp\.fc[12]|^layers\.)", k)]


def test_load_checkpoint_demo(checkpoint) -> None:
    assert checkpoint.directory == CHECKPOINT_DIR
    assert checkpoint.task == "image-classification"
    assert sorted(checkpoint.labels.values()) == sorted(LABELS)
    assert checkpoint.preprocess_source == "preprocessor_config.json"


def test_transformers_loads_the_checkpoint_and_agrees_with_ours(checkpoint, heldout: list[Path]) -> None:
    import torch
    import transformers
    theirs, info = transformers.ViTMSNForImageClassification.from_pretrained(CHECKPOINT_DIR, output_loading_info=True)
    # from_pretrained silently initialises missing weights at random: demand an exact match.
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info.get("mismatched_keys"), info
    theirs.eval()
    ours = checkpoint.build_model()
    sample = heldout[:: len(heldout) // 6][:6]
    pixels = torch.from_numpy(checkpoint.preprocess.batch(sample))
    with torch.no_grad():
        ref = theirs(pixel_values=pixels).logits
        got, _ = ours(pixels)
    assert got.shape == ref.shape == (len(sample), len(LABELS))
    assert float((got - ref).abs().max()) <= PARITY_ATOL
    assert [theirs.config.id2label[int(i)] for i in ref.argmax(1)] == [checkpoint.labels[int(i)] for i in got.argmax(1)]


def test_transformers_image_processor_reads_our_preprocessor_config(checkpoint, heldout: list[Path]) -> None:
    import transformers
    processor_cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    processor = processor_cls.from_pretrained(CHECKPOINT_DIR)
    images = [Image.open(p).convert("RGB") for p in heldout[:3]]
    ref = np.asarray(processor(images=images, return_tensors="np")["pixel_values"])
    got = checkpoint.preprocess.batch(images)
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) <= 1e-5


def test_heldout_accuracy(checkpoint, heldout: list[Path]) -> None:
    import torch
    torch.set_num_threads(2)
    model = checkpoint.build_model()
    label_index = {name: i for i, name in checkpoint.labels.items()}
    targets = np.array([label_index[p.parent.name] for p in heldout])
    predictions = []
    with torch.no_grad():
        for i in range(0, len(heldout), 20):
            logits, _ = model(torch.from_numpy(checkpoint.preprocess.batch(heldout[i:i + 20])))
            predictions.append(logits.argmax(1).numpy())
    accuracy = float((np.concatenate(predictions) == targets).mean())
    assert len(heldout) == 10 * len(LABELS)
    assert accuracy >= MIN_HELDOUT_ACCURACY, f"held-out accuracy {accuracy:.3f} on {len(heldout)} images"


# ---- the training script ------------------------------------------------------------------------
TINY_RUN = ["--hidden", "32", "--layers", "1", "--heads", "2", "--mlp", "64", "--stages", "64:2:8:1e-3,224:1:8:1e-3",
            "--pool", "16", "--monitor", "8", "--heldout-per-class", "1", "--log-every", "1"]


def test_training_script_writes_a_loadable_checkpoint_deterministically(tmp_path: Path) -> None:
    """Two three-step runs of a tiny network: every file is written, both loaders accept it, and
    the same seed gives byte-identical weights."""
    import transformers
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.demo import train

    first, second = tmp_path / "first", tmp_path / "second"
    train.main(["--out", str(first), *TINY_RUN])
    train.main(["--out", str(second), *TINY_RUN])
    assert sorted(p.name for p in first.iterdir()) == sorted(
        ["config.json", "model.safetensors", "preprocessor_config.json", "training_report.json"])
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    ckpt = load_checkpoint(str(first))
    assert ckpt.arch.hidden_size == 32 and ckpt.arch.num_hidden_layers == 1
    report = json.loads((first / "training_report.json").read_text())
    assert report["steps"] == 3
    assert report["heldout"]["images"] == len(LABELS)
    assert report["model_safetensors_sha256"] == hashlib.sha256((first / "model.safetensors").read_bytes()).hexdigest()
    _, info = transformers.ViTMSNForImageClassification.from_pretrained(first, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_training_script_rejects_a_last_stage_below_224() -> None:
    from vitmsn.export.demo import train

    with pytest.raises(SystemExit):
        train.main(["--out", "/nonexistent/never-written", "--stages", "64:1:8:1e-3"])
