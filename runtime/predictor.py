"""The Predictor: images in, labels/embeddings/raw outputs out.

    with Predictor.from_artifacts("artifacts/demo", backend="auto") as p:
        p.predict(["a.jpg", pil_image, uint8_hwc_array], top_k=5)  # [[("circle", 0.97), ...], ...]
        p.embed(images)                                             # float32 [N, D]
        p.infer(pixel_values)                                       # {"logits": ..., "embedding": ...}

Safe to call from many threads at once: preprocessing is stateless, ONNX Runtime sessions are
re-entrant and the TensorRT runner serialises its execution context. Over more than one batch,
``predict``/``embed`` preprocess the next batch on ``preprocess_workers`` threads, an image per task,
while the current one runs (Pillow and the backends release the GIL), so decoding hides behind
inference where a core is free for it (see :mod:`.prefetch` for the bound when none is).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, cast

import numpy as np

from vitmsn.errors import InputError

from .batching import MicroBatcher
from .manifest import Manifest
from .prefetch import DEFAULT_PREPROCESS_WORKERS, preprocess_ahead
from .preprocess import ImageError, ImageInput, PreprocessConfig
from .runner import Runner
from .selection import Choice, choose, describe_choice, fallback_choice

ERRORS = ("raise", "return")


@dataclass(frozen=True)
class Prediction:
    """One prediction. Unpacks and indexes as the pair ``(label, score)``; ``index`` is the class id."""

    label: str
    score: float
    index: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.label, self.score))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Any:
        return (self.label, self.score)[i]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _is_single(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim < 4
    return not isinstance(images, (list, tuple))


class Predictor:
    def __init__(self, manifest: Manifest, runner: Runner, choice: Choice, preprocess: PreprocessConfig,
                 *, batch_size: int | None = None, preprocess_workers: int = DEFAULT_PREPROCESS_WORKERS) -> None:
        self.manifest, self.runner, self.choice, self.preprocess = manifest, runner, choice, preprocess
        self.input_name = manifest.input_name
        self.labels = manifest.labels
        self.task = manifest.task
        limit = runner.max_batch
        size = int(batch_size or manifest.batch.opt)
        self.batch_size = max(1, min(size, limit) if limit else size)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self._workers = max(1, preprocess_workers)
        shape = manifest.input_shape
        self.input_shape = tuple(int(d) for d in shape[1:])  # (3, H, W)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_artifacts(cls, artifacts: str | os.PathLike[str], backend: str = "auto", precision: str | None = None,
                       *, batch_size: int | None = None, threads: int | None = None, providers: Any = "auto",
                       graph_optimization: str = "all", draft: bool = False, verify: bool = True,
                       preprocess_workers: int = DEFAULT_PREPROCESS_WORKERS) -> "Predictor":
        """Load an artifacts directory. ``backend``: auto|tensorrt|onnxruntime|openvino; ``precision``:
        None (auto, see ``vitmsn.runtime.selection``) or fp32|fp16|bf16|int8; ``threads``: ONNX
        Runtime intra-op / OpenVINO inference threads; ``draft``: faster, inexact JPEG decoding (see preprocess)."""
        manifest = Manifest.load(artifacts)
        choice = choose(manifest, backend, precision)

        def make_runner(choice: Choice) -> Runner:
            path = manifest.verify_file(choice.file, choice.sha256) if verify else manifest.path_of(choice.file)
            if choice.backend == "tensorrt":
                from .tensorrt_runner import TensorRTRunner

                assert choice.engine is not None
                return TensorRTRunner(path, choice.engine, manifest=manifest)
            if choice.backend == "openvino":
                from .openvino_runner import OpenVINORunner

                return OpenVINORunner(path, precision=choice.precision,
                                      inference_precision=choice.inference_precision or "auto", threads=threads)
            from .onnxruntime_runner import TENSORRT, OnnxRuntimeRunner, tensorrt_provider_options

            chw = tuple(int(d) for d in manifest.input_shape[1:])
            from vitmsn.cache_dir import cache_root

            cache = cache_root() / "ort-tensorrt" / choice.sha256[:16]
            options = {TENSORRT: tensorrt_provider_options(manifest.input_name, chw, manifest.batch.to_json(), cache)}
            return OnnxRuntimeRunner(path, precision=choice.precision, providers=providers, intra_op_threads=threads,
                                     graph_optimization=graph_optimization, provider_options=options)

        runner = make_runner(choice)
        try:
            runner.activate()
        except Exception as exc:  # an engine that cannot start: auto falls back to ONNX Runtime (one note)
            choice = fallback_choice(manifest, choice, backend, precision, exc)
            runner = make_runner(choice)
            runner.activate()
        preprocess = PreprocessConfig.from_manifest(manifest.preprocess, draft=draft)
        try:
            return cls(manifest, runner, choice, preprocess, batch_size=batch_size, preprocess_workers=preprocess_workers)
        except BaseException:
            runner.deactivate()
            raise

    @property
    def backend(self) -> str:
        return self.choice.backend

    @property
    def precision(self) -> str:
        return self.choice.precision

    def describe(self) -> str:
        """e.g. ``onnxruntime (CPUExecutionProvider) fp32 model.fp32.onnx``, with the providers
        the session really got."""
        actual = tuple(getattr(self.runner, "providers", ()) or self.choice.providers)
        ran = getattr(self.runner, "inference_precision", "") or self.choice.inference_precision
        return describe_choice(dataclasses.replace(self.choice, providers=actual, inference_precision=ran))

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Free the session/engine and its (device) memory. Idempotent."""
        with self._pool_lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True)
        self.runner.deactivate()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:  # no new pool (its threads would outlive close()); the runner is gone anyway
                raise RuntimeError(f"{self.manifest.root}: this Predictor is closed; load it again with Predictor.from_artifacts")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="vitmsn-preprocess")
            return self._pool

    # ---- raw inference -------------------------------------------------------------------
    def check_pixel_values(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] == 0:
            raise InputError(f"{self.input_name}: expected float32 [N, {', '.join(map(str, self.input_shape))}], "
                             f"got shape {tuple(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"{self.input_name}: expected floating-point values (preprocessed pixels), got {x.dtype}; "
                             "pass images to predict()/embed() instead")
        x = np.ascontiguousarray(x, dtype=np.float32)
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite).tolist()
            raise InputError(f"{self.input_name}: item(s) {bad} of {len(x)} contain NaN or Inf")
        return x

    def infer(self, pixel_values: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw model outputs (float32) for preprocessed input [N, 3, H, W], in batches of ``batch_size``."""
        if isinstance(pixel_values, dict):
            if set(pixel_values) != {self.input_name}:
                raise InputError(f"infer: expected the one input {self.input_name!r}, got {sorted(pixel_values)}")
            return self._infer_checked(self.check_pixel_values(pixel_values[self.input_name]))
        return self._infer_checked(self.check_pixel_values(pixel_values))

    def _infer_checked(self, x: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self.runner.infer({self.input_name: x[i:i + self.batch_size]}) for i in range(0, len(x), self.batch_size)]
        names = parts[0].keys()
        return {k: np.concatenate([p[k] for p in parts]).astype(np.float32, copy=False) if len(parts) > 1
                else parts[0][k].astype(np.float32, copy=False) for k in names}

    # ---- images --------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[ImageError | None]]:
        """Images -> (float32 [N, 3, H, W], per-image error or None). Failed rows are zeros."""
        if not images:
            return np.zeros((0, *self.input_shape), dtype=np.float32), []
        return next(preprocess_ahead([images], self.preprocess, self._executor(), self.input_shape))

    def _map_batches(self, images: Sequence[ImageInput], fn: Callable[[dict[str, np.ndarray]], list[Any]],
                     errors: str) -> list[Any]:
        """``fn`` over the good images, batch by batch, preprocessing batch k+1 while batch k runs."""
        if errors not in ERRORS:
            raise InputError(f"errors={errors!r}: choose from {', '.join(ERRORS)}")
        chunks = [images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size)]
        results: list[Any] = []
        batches = preprocess_ahead(chunks, self.preprocess, self._executor(), self.input_shape)
        try:
            for chunk in chunks:
                x, errs = next(batches)
                if errors == "raise":
                    first = next((e for e in errs if e is not None), None)
                    if first is not None:
                        raise first
                good = [i for i, e in enumerate(errs) if e is None]
                batch = x if len(good) == len(x) else x[good]
                rows = fn(self._infer_checked(batch)) if good else []
                del x, batch  # before the chunk after next is queued: two batches of pixels at a time, not three
                it = iter(rows)
                results.extend(errs[i] if errs[i] is not None else next(it) for i in range(len(chunk)))
        finally:
            batches.close()  # an error above: the chunk decoding ahead is cancelled
        return results

    def predict(self, images: ImageInput | Sequence[ImageInput], top_k: int = 5, errors: str = "raise") -> Any:
        """Top-``top_k`` ``(label, score)`` per image, best first (softmax scores).

        A list in gives a list out; one image gives its one list. ``errors="return"`` puts the
        :class:`ImageError` of an unreadable image in its slot instead of raising.
        """
        if "logits" not in self.manifest.output_names:
            raise InputError(f"{self.manifest.root}: this is a {self.task} model (no logits); use embed() instead of predict()")
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        single = _is_single(images)
        batch: list[ImageInput] = [cast(ImageInput, images)] if single else list(cast(Sequence[ImageInput], images))
        results = self._map_batches(batch, lambda out: self._top_k(out["logits"], top_k), errors)
        return results[0] if single else results

    def _top_k(self, logits: np.ndarray, top_k: int) -> list[list[Prediction]]:
        probs = softmax(logits)
        k = min(top_k, probs.shape[1])
        rows = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[:k]
            rows.append([Prediction(self.labels.get(int(i), str(int(i))), float(p[i]), int(i)) for i in order])
        return rows

    def embed(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """The ``embedding`` output, float32 [N, D] ([D] for one image). Raises on a bad image."""
        if "embedding" not in self.manifest.output_names:
            raise InputError(f"{self.manifest.root}: the model has no 'embedding' output")
        single = _is_single(images)
        batch: list[ImageInput] = [cast(ImageInput, images)] if single else list(cast(Sequence[ImageInput], images))
        rows = self._map_batches(batch, lambda out: list(out["embedding"]), "raise")
        if not rows:  # an empty list in: [0, D] out, as for any other length
            dims = next(o.shape for o in self.manifest.outputs if o.name == "embedding")[1:]
            return np.zeros((0, *(d if isinstance(d, int) else 0 for d in dims)), dtype=np.float32)
        return rows[0] if single else np.stack(rows)

    # ---- serving -------------------------------------------------------------------------
    def batcher(self, task: str = "predict", *, top_k: int = 5, max_batch: int | None = None,
                max_wait_ms: float = 5.0, max_queue: int = 64) -> MicroBatcher:
        """A :class:`MicroBatcher` in front of this predictor: ``submit(image) -> Future`` of the
        image's predictions (task ``predict``), embedding (``embed``) or output rows (``infer``)."""
        def run(x: np.ndarray) -> list[Any]:
            out = self._infer_checked(self.check_pixel_values(x))
            if task == "predict":
                return self._top_k(out["logits"], top_k)
            if task == "embed":
                return list(out["embedding"])
            return [{k: v[i] for k, v in out.items()} for i in range(len(x))]

        if task not in ("predict", "embed", "infer"):
            raise InputError(f"task {task!r}: choose predict, embed or infer")
        if task == "predict" and "logits" not in self.manifest.output_names:
            raise InputError(f"{self.manifest.root}: this is a {self.task} model (no logits); use task='embed'")
        return MicroBatcher(run, prepare=self.preprocess, max_batch=max_batch or self.batch_size,
                            max_wait_ms=max_wait_ms, max_queue=max_queue)

    def __repr__(self) -> str:
        return f"<Predictor {self.manifest.root} {self.describe()} batch {self.batch_size}>"
