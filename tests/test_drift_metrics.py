"""vitmsn.export.validation.metrics against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitmsn.export.validation import metrics as dm


def test_cosine_hand_computed():
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    got = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(dm.cosine_similarity(got, ref), [0.0, 1.0, 1.0, 0.0, -1.0], atol=1e-12)


def test_cosine_flattens_each_sample():
    ref = np.array([[[1.0, 0.0], [0.0, 0.0]]])  # [1, 2, 2] -> one vector of 4
    got = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    np.testing.assert_allclose(dm.cosine_similarity(got, ref), [1 / math.sqrt(2)])


def test_errors_hand_computed():
    ref = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    got = np.array([[1.0, 2.0, 5.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    per = dm.per_image(got, ref)
    np.testing.assert_allclose(per["max_abs"], [3.0, 0.0])
    np.testing.assert_allclose(per["mean_abs"], [1.0, 0.0])
    # ||(0,0,3)|| / ||(1,2,2)|| = 3 / 3
    np.testing.assert_allclose(per["rel_l2"], [1.0, 0.0])
    # <(1,2,5),(1,2,2)> = 15; ||.|| = sqrt(30) * 3
    np.testing.assert_allclose(per["cosine"], [15 / (math.sqrt(30) * 3), 1.0])


def test_relative_error_of_zero_reference_is_infinite():
    per = dm.per_image(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]]))
    assert per["rel_l2"][0] == np.inf


def test_kl_hand_computed():
    # softmax([0, ln 3]) = (1/4, 3/4); softmax([0, 0]) = (1/2, 1/2)
    ref = np.array([[0.0, math.log(3.0)]])
    got = np.array([[0.0, 0.0]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    np.testing.assert_allclose(dm.kl_divergence(got, ref), [expected], rtol=1e-12)
    np.testing.assert_allclose(dm.kl_divergence(ref, ref), [0.0], atol=1e-15)
    # shift invariance of softmax: adding a constant to every logit changes nothing
    np.testing.assert_allclose(dm.kl_divergence(got + 1000.0, ref - 1000.0), [expected], rtol=1e-9)


def test_top1_and_top5_hand_computed():
    ref = np.array([[9, 8, 7, 6, 5, 4, 3], [0, 1, 2, 3, 4, 5, 6]], dtype=np.float64)
    # row 0: same top-1, top-5 {0,1,2,3,6} vs {0,1,2,3,4}: overlap 4/5
    # row 1: top-1 differs (0 vs 6), top-5 {0,1,2,3,4} vs {2,3,4,5,6}: overlap 3/5
    got = np.array([[9, 8, 7, 6, 1, 0, 5.5], [9, 8, 7, 6, 5, 0, 0]], dtype=np.float64)
    per = dm.per_image(got, ref, classification=True)
    assert per["top1_agree"].tolist() == [True, False]
    np.testing.assert_allclose(per["top5_overlap"], [0.8, 0.6])
    s = dm.summarize(per)
    assert s["top1_agreement"] == 0.5 and s["top1_disagreements"] == 1
    assert s["top5_overlap"] == pytest.approx(0.7)


def test_top5_with_fewer_than_five_classes_uses_all_classes():
    ref = np.array([[1.0, 2.0, 3.0]])
    got = np.array([[3.0, 2.0, 1.0]])
    assert dm.top5_overlap(got, ref).tolist() == [1.0]


def test_summary_hand_computed():
    per = {
        "max_abs": np.array([0.1, 0.4, 0.2, 0.3]),
        "mean_abs": np.array([0.1, 0.2, 0.3, 0.4]),
        "rel_l2": np.array([0.01, 0.02, 0.03, 0.06]),
        "cosine": np.array([1.0, 0.9, 0.8, 0.7]),
    }
    s = dm.summarize(per)
    assert s["images"] == 4
    assert s["max_abs"] == pytest.approx(0.4)
    assert s["mean_abs"] == pytest.approx(0.25)
    assert s["rel_l2_mean"] == pytest.approx(0.03) and s["rel_l2_max"] == pytest.approx(0.06)
    assert s["cosine_min"] == pytest.approx(0.7) and s["cosine_mean"] == pytest.approx(0.85)
    # 1st percentile, linear: position 0.01 * 3 = 0.03 between 0.7 and 0.8
    assert s["cosine_p1"] == pytest.approx(0.7 + 0.03 * 0.1)
    assert s["nonfinite_images"] == 0


def test_nonfinite_output_fails_every_comparison():
    ref = np.array([[1.0, 2.0], [1.0, 2.0]])
    got = np.array([[np.nan, 2.0], [1.0, 2.0]])
    per = dm.per_image(got, ref, classification=True)
    assert per["cosine"][0] == -1.0 and per["cosine"][1] == pytest.approx(1.0)
    assert per["top1_agree"].tolist() == [False, True]
    s = dm.summarize(per)
    assert s["nonfinite_images"] == 1
    assert s["max_abs"] is None and s["kl_max"] is None  # JSON-safe, and None never passes a gate
    assert s["cosine_min"] == -1.0


def test_streaming_equals_whole():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((10, 6))
    got = ref + rng.normal(0, 0.1, ref.shape)
    whole = dm.summarize(dm.per_image(got, ref, classification=True))
    parts = dm.concat([dm.per_image(got[i:i + 3], ref[i:i + 3], classification=True) for i in range(0, 10, 3)])
    assert dm.summarize(parts) == whole


def test_accuracy_ignores_unknown_labels():
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert dm.accuracy(logits, np.array([0, 0, 1, -1])) == pytest.approx(2 / 3)
    assert dm.accuracy(logits, np.array([-1, -1, -1, -1])) is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dm.per_image(np.zeros((2, 3)), np.zeros((2, 4)))


# ---- gates (vitmsn.export.validation.gates) ----------------------------------------------------------
def test_threshold_forms():
    from vitmsn.core.errors import InputError
    from vitmsn.export.validation.gates import parse_threshold

    assert parse_threshold(0.9, "--x") == {"*": 0.9}
    assert parse_threshold("0.9", "--x") == {"*": 0.9}
    assert parse_threshold("int8=0.9, fp16=0.99", "--x") == {"int8": 0.9, "fp16": 0.99}
    assert parse_threshold({"int8": 0.9}, "--x") == {"int8": 0.9}
    for bad in ("fp64=0.9", "int8=abc", "x"):
        with pytest.raises(InputError, match="--x"):
            parse_threshold(bad, "--x")


def test_gates_defaults_overrides_and_failures():
    import numpy as np

    from vitmsn.export.validation.gates import DEFAULT_THRESHOLDS, Gates, evaluate

    gates = Gates.build(min_top1_agreement=0.5, min_cosine="int8=0.8")
    assert gates.for_precision("fp16").min_top1_agreement == 0.5
    assert gates.for_precision("int8").min_cosine == 0.8
    assert gates.for_precision("fp32").min_cosine == DEFAULT_THRESHOLDS["fp32"].min_cosine
    agree = np.arange(300) < 180  # 60 % agree
    cosine = np.full(300, -1.0)  # what per_image gives a non-finite output
    results = {r.gate: r for r in evaluate(gates, "int8", {"top1_agree": agree, "cosine": cosine}, (6, 0, 300))}
    assert results["min_top1_agreement"].passed and results["min_top1_agreement"].source == "override"
    assert results["min_cosine"].verdict == "failed"  # a non-finite output never passes
    # 6 of 300 lost: the drop is 0.02 but its upper bound is not <= 0.02, and its lower bound is below it
    drop = results["max_accuracy_drop"]
    assert drop.value == 0.02 and drop.verdict == "inconclusive" and drop.source == "default"
    assert "cosine_p5 = -1 (95% lower bound -1, n=300), gate >= 0.8: failed" in results["min_cosine"].describe(
        "onnxruntime", "int8")
    # a figure that does not exist (no labels, feature extractor) is not gated
    assert [r.gate for r in evaluate(Gates(), "fp16", {"cosine": np.ones(3)})] == ["min_cosine"]


def test_default_thresholds_are_ordered_by_precision():
    from vitmsn.export.validation.gates import DEFAULT_THRESHOLDS as d

    # top-1 and accuracy drop: what a few hundred images can prove (the same for the near-exact precisions)
    assert d["fp32"].min_top1_agreement >= d["fp16"].min_top1_agreement > d["int8"].min_top1_agreement
    assert d["fp32"].min_cosine > d["fp16"].min_cosine > d["int8"].min_cosine
    assert d["fp32"].max_accuracy_drop <= d["fp16"].max_accuracy_drop < d["int8"].max_accuracy_drop
