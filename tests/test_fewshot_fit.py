"""vitmsn.fewshot.fit_head: the protocol on synthetic embeddings, checked against scikit-learn used directly."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vitmsn.fewshot import C_GRID, ONE_SHOT_C, fit_head, near_duplicate_groups


def _blobs(shots: int, classes: int = 3, dim: int = 16, seed: int = 0, spread: float = 1.0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2.0
    x = np.concatenate([c + rng.normal(size=(shots, dim)) * spread for c in centres]) + 5.0  # off-centre, like CLS tokens
    labels = [f"class_{i}" for i in range(classes) for _ in range(shots)]
    return (x * 3.0).astype(np.float32), labels


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_folded_head_is_logistic_regression_on_centred_scaled_features():
    x, y = _blobs(8, spread=3.0)  # overlapping classes: a moderate C, a well-defined optimum
    head = fit_head(x, y)
    # the protocol by hand: centre, one RMS scale, balanced multinomial LR at the chosen C
    x64 = x.astype(np.float64)
    z = (x64 - x64.mean(axis=0)) / np.sqrt(np.mean(x64.var(axis=0)))
    clf = LogisticRegression(C=head.C, class_weight="balanced", tol=1e-10, max_iter=100_000).fit(z, y)
    probe = x + np.random.default_rng(1).normal(size=x.shape).astype(np.float32) * 3
    z_probe = (probe.astype(np.float64) - x64.mean(axis=0)) / np.sqrt(np.mean(x64.var(axis=0)))
    # both solvers stop at a tolerance, and W, b are stored as float32: probabilities agree to 1e-3
    np.testing.assert_allclose(_softmax(head.logits(probe).astype(np.float64)), clf.predict_proba(z_probe), atol=1e-3)
    assert [head.id2label[i] for i in range(3)] == list(clf.classes_)
    assert head.weight.shape == (3, 16) and head.weight.dtype == np.float32 and head.bias.shape == (3,)


def test_id2label_follows_the_fitted_classes_not_the_input_order():
    x, y = _blobs(6, classes=2)
    renamed = ["zebra" if label == "class_0" else "apple" for label in y]  # zebra comes first in the input
    head = fit_head(x, renamed)
    assert head.id2label == {0: "apple", 1: "zebra"}
    assert head.predict(x[:6]) == ["zebra"] * 6  # two classes: one logit each, not sklearn's single one
    assert head.weight.shape == (2, 16)


def test_c_comes_from_cross_validation_with_k_from_the_smallest_class():
    x, y = _blobs(6)
    x, y = x[:-3], y[:-3]  # class_2 keeps 3 shots: k = min(5, 3)
    head = fit_head(x, y)
    assert head.cv is not None and head.cv.folds == 3 and head.cv.n == len(y)
    assert head.C in C_GRID and head.C > C_GRID[0]  # separated blobs: the strongest penalty is never best
    assert set(head.cv.log_loss) == set(C_GRID)
    assert np.sum(head.cv.confusion) == len(y) and np.trace(head.cv.confusion) == head.cv.correct
    assert "cross-validation" in head.c_choice


def test_one_shot_per_class_uses_the_fixed_c_and_says_so():
    x, y = _blobs(1, classes=4)
    head = fit_head(x, y)
    assert head.C == ONE_SHOT_C and head.cv is None
    assert "fixed" in head.c_choice and head.notes == [head.c_choice]
    assert head.predict(x) == y


def test_near_duplicates_share_a_group_within_a_class_only():
    x, y = _blobs(4, classes=2)
    x = np.concatenate([x, x[:1] * 1.0001, x[:1] * 1.0001])  # a near-copy of class_0's first shot, labelled both ways
    y = np.array(y + ["class_0", "class_1"])
    groups = near_duplicate_groups(x, y)
    assert groups[8] == groups[0]
    assert groups[9] != groups[0]  # another class: never merged (the folder reader refuses such a pair)
    assert len(set(groups[:8])) == 8


def test_near_duplicate_shots_stay_in_one_fold():
    x, y = _blobs(5)
    x, y = np.concatenate([x, x + 1e-4]), y + y  # every shot twice: 5 distinct shots per class
    head = fit_head(x, y)
    assert head.near_duplicates == 15
    # a shot validated against a model trained on its own copy would be right every time: copies share a fold
    assert head.cv is not None and head.cv.folds == 5
    assert head.cv.fold_of[:15] == head.cv.fold_of[15:]
    assert sorted(set(head.cv.fold_of)) == [0, 1, 2, 3, 4]


def test_bad_input_is_refused():
    x, y = _blobs(3)
    with pytest.raises(ValueError, match="at least 2"):
        fit_head(x[:3], y[:3])
    with pytest.raises(ValueError, match="N labels"):
        fit_head(x, y[:-1])
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_head(x, y)


def test_importing_the_fit_loads_no_torch():
    code = "import sys, vitmsn.fewshot; bad = {'torch', 'onnx', 'transformers'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
