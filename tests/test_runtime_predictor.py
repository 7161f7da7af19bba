"""The Predictor on ONNX Runtime (CPU) against transformers' processor + model and PyTorch.

Tolerances: softmax scores within 1e-5 absolute and embeddings within 1e-4 of transformers
(FP32 on CPU, same weights; only the op order differs); labels in the same order wherever the
scores are more than 1e-4 apart. Thread safety is checked by exact equality.
"""

from __future__ import annotations

import json

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import Exported, photo, rt_cls, rt_feat, write_bad_files, write_photo_formats  # noqa: F401
from vitmsn.core.errors import InputError
from vitmsn.runtime import ImageError, Prediction, Predictor

SCORE_ATOL = 1e-5
EMBED_ATOL = 1e-4
FORMATS = ["photo.jpg", "photo.png", "photo.webp", "grey.jpg", "grey.png", "rgba.png", "la.png", "palette.png",
           "palette_transparent.png", "palette.gif", "cmyk.jpg", "photo.bmp", "photo.tiff"]


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_photo_formats(tmp_path_factory.mktemp("formats"), seed=1, size=(400, 300))


@pytest.fixture(scope="module")
def predictor(rt_cls: Exported):
    with Predictor.from_artifacts(rt_cls.artifacts) as p:
        yield p


def transformers_probs(checkpoint: Path, images: list[Image.Image], classifier: bool = True,
                       convert_rgb: bool | None = True) -> np.ndarray:
    """``convert_rgb=None``: as transformers.pipeline calls the processor (on load_image's RGB images)."""
    import torch
    import transformers
    processor = transformers.ViTImageProcessorPil.from_pretrained(checkpoint)
    pixels = torch.from_numpy(processor(images, do_convert_rgb=convert_rgb, return_tensors="np")["pixel_values"])
    cls = transformers.ViTMSNForImageClassification if classifier else transformers.ViTMSNModel
    model = cls.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        if classifier:
            return torch.softmax(model(pixel_values=pixels).logits.double(), -1).numpy()
        return model(pixel_values=pixels).last_hidden_state[:, 0].numpy()


def assert_same_ranking(preds: list[Prediction], probs: np.ndarray) -> None:
    assert [p.score for p in preds] == sorted((p.score for p in preds), reverse=True)
    for p in preds:
        assert abs(p.score - probs[p.index]) <= SCORE_ATOL, (p, probs[p.index])
    expected = np.argsort(-probs, kind="stable")[: len(preds)]
    for got, want in zip(preds, expected):
        assert got.index == want or abs(probs[got.index] - probs[want]) <= 1e-4


def test_predict_matches_transformers_on_real_files_in_every_format(predictor: Predictor, rt_cls: Exported,
                                                                    formats: dict[str, Path]) -> None:
    from transformers.image_utils import load_image

    paths = [formats[n] for n in FORMATS]
    images = [load_image(str(path)) for path in paths]  # as transformers.pipeline loads files (alpha dropped)
    probs = transformers_probs(rt_cls.checkpoint, images, convert_rgb=None)
    preds = predictor.predict(paths, top_k=6)
    assert len(preds) == len(paths)
    labels = predictor.labels
    for name, row, p in zip(FORMATS, preds, probs):
        assert [x.label for x in row] == [labels[x.index] for x in row], name
        assert_same_ranking(row, p)
    assert len({row[0].index for row in preds}) >= 1 and probs.max(axis=1).min() > 0.3  # a real, non-uniform signal


def test_embed_matches_transformers_cls_token(rt_feat: Exported, formats: dict[str, Path]) -> None:
    paths = [formats["photo.jpg"], formats["rgba.png"], formats["cmyk.jpg"]]
    from transformers.image_utils import load_image

    expected = transformers_probs(rt_feat.checkpoint, [load_image(str(p)) for p in paths], classifier=False,
                                  convert_rgb=None)
    with Predictor.from_artifacts(rt_feat.artifacts) as p:
        got = p.embed(paths)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() <= EMBED_ATOL
        with pytest.raises(InputError, match="feature-extraction model .*use embed"):
            p.predict(paths)
        with pytest.raises(InputError, match="use task='embed'"):
            p.batcher("predict")


def test_single_input_list_input_and_input_kinds(predictor: Predictor, formats: dict[str, Path]) -> None:
    path = formats["photo.png"]
    batch = predictor.predict([path], top_k=3)
    assert predictor.predict(path, top_k=3) == batch[0]
    arr = np.asarray(Image.open(path))
    same = predictor.predict([str(path), path.read_bytes(), Image.open(path), arr, np.stack([arr, arr])[0]], top_k=3)
    assert all(row == batch[0] for row in same)
    assert predictor.predict(np.stack([arr, arr]), top_k=3) == [batch[0], batch[0]]  # a 4-D array is a batch
    label, score = batch[0][0]  # a Prediction unpacks as (label, score)
    assert (label, score) == (batch[0][0].label, batch[0][0].score)
    assert batch[0][0].to_dict() == {"label": label, "index": batch[0][0].index, "score": score}
    assert predictor.embed(path).shape == (32,)
    assert predictor.predict([]) == [] and predictor.embed([]).shape == (0, 32)  # an empty list: empty results


def test_batches_split_and_results_do_not_depend_on_batch_size(predictor: Predictor, formats: dict[str, Path]) -> None:
    paths = [formats[n] for n in FORMATS]  # 13 images over batches of 4
    assert predictor.batch_size == 4
    together = predictor.predict(paths, top_k=6)
    alone = [predictor.predict(p, top_k=6) for p in paths]
    for a, b in zip(together, alone):
        assert [x.index for x in a] == [x.index for x in b]
        assert np.allclose([x.score for x in a], [x.score for x in b], atol=1e-6)
    x = predictor.preprocess.batch(paths)
    out = predictor.infer(x)
    assert set(out) == {"logits", "embedding"} and out["logits"].shape == (13, 6) and out["logits"].dtype == np.float32
    for n in (1, 3, 9):
        assert np.allclose(predictor.infer({"pixel_values": x[:n]})["logits"], out["logits"][:n], atol=1e-5)


def test_bad_inputs_each_get_their_own_error_and_lose_nothing_else(predictor: Predictor, formats: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    bad = write_bad_files(tmp_path)
    good = [formats["photo.jpg"], formats["grey.png"], formats["rgba.png"]]
    wrong_array = np.zeros((20, 20, 5), np.uint8)
    inputs = [good[0], bad["empty.jpg"], bad["truncated.jpg"], good[1], bad["text.jpg"], bad["bomb.png"],
              wrong_array, tmp_path / "missing.jpg", good[2], bad["eps.jpg"]]
    results = predictor.predict(inputs, top_k=2, errors="return")
    expected_good = predictor.predict(good, top_k=2)
    assert [r for r in results if not isinstance(r, Exception)] == expected_good
    reasons = {1: "empty file", 2: "truncated", 4: "not a readable image", 5: "too large", 6: "got shape",
               7: "no such file", 9: "not a readable image"}
    for i, reason in reasons.items():
        assert isinstance(results[i], ImageError) and reason in str(results[i]), (i, results[i])
    with pytest.raises(ImageError, match="empty file"):
        predictor.predict(inputs, top_k=2)  # errors="raise" (the default) raises the first
    with pytest.raises(InputError, match="errors="):
        predictor.predict(good, errors="ignore")


def test_infer_rejects_nan_wrong_shapes_and_integer_input(predictor: Predictor) -> None:
    x = np.zeros((3, 3, 48, 48), np.float32)
    x[1, 2, 5, 5] = np.nan
    with pytest.raises(InputError, match=r"item\(s\) \[1\] of 3 contain NaN or Inf"):
        predictor.infer(x)
    x[1, 2, 5, 5] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        predictor.infer(x)
    with pytest.raises(InputError, match="expected float32 \\[N, 3, 48, 48\\]"):
        predictor.infer(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="floating-point"):
        predictor.infer(np.zeros((2, 3, 48, 48), np.uint8))
    with pytest.raises(InputError, match="expected the one input"):
        predictor.infer({"images": np.zeros((1, 3, 48, 48), np.float32)})
    assert predictor.infer(np.zeros((3, 48, 48), np.float64))["logits"].shape == (1, 6)  # one CHW image, cast


def test_many_threads_get_exactly_the_sequential_results(predictor: Predictor, tmp_path: Path) -> None:
    files = []
    for i in range(24):
        files.append(tmp_path / f"{i}.jpg")
        photo(160 + 8 * i, 120, seed=100 + i).save(files[-1], quality=85)
    jobs = [files[i:i + 3 + i % 4] for i in range(0, 24, 2)]  # 12 jobs, overlapping, different sizes
    sequential = [(predictor.predict(job, top_k=6), predictor.embed(job)) for job in jobs]
    results: dict[int, object] = {}
    barrier = threading.Barrier(12)

    def work(k: int) -> None:
        barrier.wait()
        for _ in range(2):
            results[k] = (predictor.predict(jobs[k], top_k=6), predictor.embed(jobs[k]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (preds, emb) in enumerate(sequential):
        got_preds, got_emb = results[k]  # type: ignore[misc]
        assert got_preds == preds
        assert np.array_equal(got_emb, emb)


def test_memory_stays_at_two_batches_of_pixels_over_a_long_list(rt_cls: Exported) -> None:
    """5 batches in: the batch being inferred and the one decoding ahead, never a third (the one just inferred,
    still held while the next is queued). tracemalloc counts numpy's buffers exactly; the margin (half a batch:
    the embedding rows, futures and decode temporaries of 2 workers take ~0.2) is not a timing."""
    import tracemalloc

    batch = 32
    images = [np.full((48, 48, 3), i % 251, np.uint8) for i in range(5 * batch)]
    with Predictor.from_artifacts(rt_cls.artifacts, "onnxruntime", threads=1, batch_size=batch) as p:
        one_batch = batch * int(np.prod(p.input_shape)) * 4
        p.predict(images[:batch])  # session and pool warm
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            results = p.embed(images)  # rows of 32 floats: the pixels dominate what is traced
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert len(results) == len(images)
    assert peak < 2.5 * one_batch, f"peak {peak / one_batch:.2f} batches of pixels"


def test_context_manager_frees_the_session(rt_cls: Exported) -> None:
    with Predictor.from_artifacts(rt_cls.artifacts, "onnxruntime", threads=1, graph_optimization="basic") as p:
        assert p.runner.is_active and p.backend == "onnxruntime" and p.precision == "fp32"
        p.predict(np.zeros((60, 60, 3), np.uint8))
    assert not p.runner.is_active and p.runner._session is None
    with pytest.raises(RuntimeError, match="not active"):
        p.infer(np.zeros((1, 3, 48, 48), np.float32))
    with pytest.raises(RuntimeError, match="this Predictor is closed"):  # said plainly; no new decode pool either
        p.predict([np.zeros((60, 60, 3), np.uint8)])
    p.close()  # idempotent


def test_a_changed_model_file_is_refused(rt_cls: Exported, tmp_path: Path) -> None:
    copy = tmp_path / "artifacts"
    shutil.copytree(rt_cls.artifacts, copy)
    for name in ("model.fp32.ort.onnx", "model.fp32.onnx"):  # the CPU flavour the runtime loads, then the graph
        with open(copy / name, "ab") as f:
            f.write(b"\0")
        with pytest.raises(InputError, match="SHA-256 .* does not match the manifest"):
            Predictor.from_artifacts(copy, "onnxruntime", precision="fp32")
        if name == "model.fp32.ort.onnx":  # without the flavour in the manifest the plain graph is loaded and checked
            data = json.loads((copy / "manifest.json").read_text())
            del data["precisions"]["fp32"]["onnxruntime_optimized"]
            (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="precision 'int8' was not exported"):
        Predictor.from_artifacts(rt_cls.artifacts, precision="int8")
    with pytest.raises(InputError, match="not an artifacts directory"):
        Predictor.from_artifacts(tmp_path / "nowhere")


def test_demo_model_predictions_equal_pytorch(demo_artifacts: Path, heldout_images: Path) -> None:
    """The trained demo, on its real image files: ONNX Runtime through the whole runtime (decode,
    preprocess, infer, softmax) against PyTorch on transformers' preprocessing of the same files."""
    import torch
    import transformers
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.demo import CHECKPOINT_DIR

    paths = sorted(p for p in heldout_images.rglob("*") if p.suffix in (".jpg", ".png"))[::3]
    processor = transformers.ViTImageProcessorPil.from_pretrained(CHECKPOINT_DIR)
    images = [Image.open(p) for p in paths]
    pixels = torch.from_numpy(processor(images, do_convert_rgb=True, return_tensors="np")["pixel_values"])
    model = load_checkpoint("demo").build_model()
    with torch.no_grad():
        probs = torch.softmax(model(pixels)[0].double(), -1).numpy()
    with Predictor.from_artifacts(demo_artifacts) as p:
        preds = p.predict(paths, top_k=3)
    assert len(preds) == len(paths) > 20
    for row, prob in zip(preds, probs):
        assert row[0].index == int(prob.argmax())
        assert all(abs(x.score - prob[x.index]) <= 1e-4 for x in row)
    correct = sum(row[0].label == path.parent.name for row, path in zip(preds, paths))
    assert correct / len(paths) >= 0.9  # it is the trained model (96.5% held-out), reading the right pixels
