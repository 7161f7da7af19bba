"""Fit a linear classifier head on frozen embeddings (numpy + scikit-learn; no torch).

The protocol (README, "Few-shot classification"), each step checkable by hand:

1. centre the embeddings on the shots' mean and divide by one scale, the RMS of the per-feature
   standard deviations (so the features have unit RMS spread and C means the same on any backbone);
2. multinomial L2 logistic regression with an intercept and ``class_weight="balanced"``, lbfgs to a
   tight tolerance (:data:`TOLERANCE`);
3. C from :data:`C_GRID` (1e-3 to 1e5, half decades) by stratified k-fold, k = min(5, the smallest class's
   number of distinct shots): the lowest class-balanced validation log-loss over the pooled out-of-fold
   predictions, ties to the smaller C; near-duplicate shots (embedding cosine >= :data:`NEAR_DUPLICATE_COSINE`
   within a class) stay in one fold; then the model is refit on all shots with that C. When a class has only
   one distinct shot there is nothing to cross-validate: C is fixed at :data:`ONE_SHOT_C` and the head says so;
4. the centring and scaling are folded into W and b, so ``logits = embedding @ W.T + b`` on the raw
   embedding: an ordinary linear layer, i.e. ``ViTMSNForImageClassification``'s classifier.

``id2label`` comes from the fitted classes (sorted label names), never from an input order. The
cross-validated figures (out-of-fold predictions at the chosen C) are slightly optimistic: the same folds
chose C.

    from vitmsn.fewshot import fit_head
    head = fit_head(predictor.embed(images), labels)      # float32 [N, D], N label strings
    logits = head.logits(predictor.embed(new_images))     # [M, classes]; head.id2label names the columns
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

C_GRID: tuple[float, ...] = tuple(float(10.0 ** e) for e in np.arange(-3.0, 5.01, 0.5))
# One shot per class: scikit-learn's default. On the demo's 1-shot draws every C of the grid lands within 64-69 %
# held-out accuracy (benchmarks/fewshot.md); picking the best one there would be tuning on the test images.
ONE_SHOT_C = 1.0
TOLERANCE = 1e-8
MAX_ITER = 10_000
MAX_FOLDS = 5
NEAR_DUPLICATE_COSINE = 0.995
_BLOCK = 256  # rows per block of the near-duplicate search: 256 x class size float32 (100 MB at 100,000 shots)


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold figures at the chosen C, and the validation log-loss of every C tried."""

    folds: int
    correct: int
    n: int
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]  # [true class][predicted class], in id2label order
    log_loss: dict[float, float]  # C -> class-balanced validation log-loss
    fold_of: list[int]  # the fold that held each shot out

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


@dataclass(frozen=True)
class FewshotHead:
    """The folded head: ``logits = embeddings @ weight.T + bias`` on raw (unscaled) embeddings."""

    weight: np.ndarray  # float32 [classes, D]
    bias: np.ndarray  # float32 [classes]
    id2label: dict[int, str]
    C: float
    c_choice: str  # how C was chosen, in words
    shots: dict[str, int]
    cv: CrossValidation | None  # None when C was fixed (one shot per class)
    fit_seconds: float
    near_duplicates: int = 0  # shots that share a fold with a near-duplicate of theirs
    notes: list[str] = field(default_factory=list)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(embeddings, dtype=np.float32) @ self.weight.T + self.bias

    def predict(self, embeddings: np.ndarray) -> list[str]:
        return [self.id2label[int(i)] for i in self.logits(embeddings).argmax(axis=1)]


def _standardise(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The shots' mean and one scale: the RMS of the per-feature standard deviations."""
    mean = x.mean(axis=0)
    scale = float(np.sqrt(np.mean(x.var(axis=0))))
    return mean, scale if scale > 0 else 1.0


def _fit(z: np.ndarray, y: np.ndarray, C: float, clf: Any = None) -> Any:
    """Fit (or refit ``clf``, from its last solution: the optimum is unique, only the path is shorter)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if clf is None:
        clf = LogisticRegression(class_weight="balanced", solver="lbfgs", tol=TOLERANCE, max_iter=MAX_ITER,
                                 warm_start=True)
    with warnings.catch_warnings():  # a large C on separable shots converges slowly; the optimum is still found
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.set_params(C=C).fit(z, y)


def _coef(clf: Any, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One row of W and b per class. Two classes: scikit-learn fits one logit, written as (-l/2, +l/2)."""
    w, b = np.asarray(clf.coef_, dtype=np.float64), np.asarray(clf.intercept_, dtype=np.float64)
    if classes == 2 and w.shape[0] == 1:
        return np.vstack([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
    return w, b


def near_duplicate_groups(x: np.ndarray, y: np.ndarray, threshold: float = NEAR_DUPLICATE_COSINE) -> np.ndarray:
    """A group id per shot: shots of one class whose embeddings have cosine >= ``threshold`` (transitively) share it.

    Compared within each class, ``_BLOCK`` rows at a time (memory: block x class size floats)."""
    parent = np.arange(len(x))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    unit = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        for start in range(0, len(idx), _BLOCK):
            rows = idx[start:start + _BLOCK]
            sims = unit[rows] @ unit[idx].T
            for a, b in zip(*np.nonzero(sims >= threshold)):
                i, j = root(int(rows[a])), root(int(idx[b]))
                if i != j:
                    parent[max(i, j)] = min(i, j)
    return np.array([root(i) for i in range(len(x))])


def _balanced_log_loss(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import log_loss
    from sklearn.utils.class_weight import compute_sample_weight

    return float(log_loss(y, proba, labels=classes, sample_weight=compute_sample_weight("balanced", y)))


def _out_of_fold(z: np.ndarray, y: np.ndarray, classes: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                 c_grid: Sequence[float]) -> dict[float, np.ndarray]:
    """For each C, the validation probabilities of every shot, each from the fold that held it out ([N, classes])."""
    proba = {C: np.full((len(y), len(classes)), 1e-15) for C in c_grid}
    for train, test in folds:
        clf = None
        for C in sorted(c_grid):  # ascending: each fit starts from the last one's solution
            clf = _fit(z[train], y[train], C, clf)
            cols = np.searchsorted(classes, clf.classes_)  # a class absent from a training fold keeps ~0
            proba[C][np.ix_(test, cols)] = clf.predict_proba(z[test])
    return {C: p / p.sum(axis=1, keepdims=True) for C, p in proba.items()}


def fit_head(embeddings: np.ndarray, labels: Sequence[str], c_grid: Sequence[float] = C_GRID,
             seed: int = 0) -> FewshotHead:
    """Fit the head on ``embeddings`` (float [N, D]) labelled ``labels`` (N strings). See the module docstring.

    Raises ValueError for fewer than 2 classes, a shape mismatch or non-finite embeddings."""
    try:
        import sklearn.linear_model  # noqa: F401  (loads scipy's BLAS now: threadpoolctl limits only loaded libraries)
        from threadpoolctl import threadpool_limits
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("vitmsn.fewshot.fit_head needs scikit-learn: pip install scikit-learn "
                                  "(or the 'export' extra)", name=exc.name) from None

    # One BLAS/OpenMP thread: these matrices are small, and threads fighting over busy cores made the
    # fits over 10x slower (30 shots: 94 s against 8 s on 2 shared cores); the result does not depend on it.
    with threadpool_limits(limits=1):
        return _fit_head(embeddings, labels, c_grid, seed)


def _fit_head(embeddings: np.ndarray, labels: Sequence[str], c_grid: Sequence[float], seed: int) -> FewshotHead:
    from sklearn.model_selection import StratifiedGroupKFold

    started = time.perf_counter()
    x = np.asarray(embeddings, dtype=np.float64)
    y = np.asarray([str(label) for label in labels])
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings {x.shape} and {len(y)} labels: expected [N, D] and N labels")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinity")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"{len(classes)} class(es): a classifier needs at least 2")
    mean, scale = _standardise(x)
    z = (x - mean) / scale
    groups = near_duplicate_groups(x, y)
    distinct = min(len(np.unique(groups[y == c])) for c in classes)
    k = min(MAX_FOLDS, distinct)
    cv = None
    if k < 2:
        C, choice = ONE_SHOT_C, f"fixed C={ONE_SHOT_C:g}: a class has one distinct shot, nothing to cross-validate"
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class has fewer members than n_splits": k allows for it
            warnings.simplefilter("ignore", UserWarning)
            folds = list(splitter.split(z, y, groups))
        probas = _out_of_fold(z, y, classes, folds, c_grid)
        losses = {C: _balanced_log_loss(y, p, classes) for C, p in probas.items()}
        best = min(losses.values())
        C = min(c for c, loss in losses.items() if loss <= best + 1e-12)  # ties to the smaller C
        choice = f"C={C:g} by {k}-fold stratified cross-validation (lowest validation log-loss of {len(c_grid)})"
        predicted = probas[C].argmax(axis=1)
        truth = np.searchsorted(classes, y)
        confusion = np.zeros((len(classes), len(classes)), dtype=int)
        np.add.at(confusion, (truth, predicted), 1)
        fold_of = np.zeros(len(y), dtype=int)
        for i, (_, test) in enumerate(folds):
            fold_of[test] = i
        cv = CrossValidation(k, int((predicted == truth).sum()), len(y),
                             {str(c): float(confusion[i, i] / confusion[i].sum()) for i, c in enumerate(classes)},
                             confusion.tolist(), {float(c): round(v, 6) for c, v in losses.items()}, fold_of.tolist())
    clf = _fit(z, y, C)
    w, b = _coef(clf, len(classes))
    weight = w / scale  # logits = w @ (x - mean) / scale + b
    bias = b - weight @ mean
    notes = []
    if k < 2:
        notes.append(choice)
    return FewshotHead(weight.astype(np.float32), bias.astype(np.float32),
                       {i: str(c) for i, c in enumerate(clf.classes_)}, float(C), choice,
                       {str(c): int(n) for c, n in zip(classes, counts)}, cv, time.perf_counter() - started,
                       int(len(groups) - len(np.unique(groups))), notes)
