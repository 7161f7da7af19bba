"""Preprocessing that runs ahead of inference: batch k+1 is decoded while batch k is inferred.

    for x, errors in preprocess_ahead(chunks, predictor.preprocess, pool, (3, 224, 224)):
        outputs = runner.infer({"pixel_values": x})   # the next chunk decodes meanwhile

Each image of a chunk is its own task on ``pool`` (a ``ThreadPoolExecutor``): Pillow's decode and
resize and numpy's normalisation release the GIL, so with ``W`` workers up to ``W`` images decode at
once on cores the inference is not using, and inference (ONNX Runtime, OpenVINO, TensorRT all release
the GIL too) keeps running meanwhile. Only the next chunk is ever in flight, so memory stays at two
batches of float32 pixels whatever the number of images, provided the caller drops each chunk's pixels
before asking for the next (a ``for`` loop's variables keep them alive while the chunk after is queued:
three batches; ``Predictor`` deletes them).

What the overlap can win is bounded by the cores: when inference already keeps every core busy
(intra-op threads = cores), decoding takes core time from it, and end-to-end throughput over raw
inference is at most ``t_infer / (t_infer + t_preprocess)`` in core-seconds per image. ``vitmsn bench``
measures both terms in the same run and prints that bound beside the end-to-end rows.

An image that cannot be read becomes its :class:`ImageError` in the chunk's error list (its row of
pixels is zeros); the other images of the chunk are unaffected.

A source whose read may never end (a pipe or device path such as a FIFO or ``/dev/stdin``, a file
object) is read on the caller's thread instead, when its chunk is queued: there an interrupt (SIGINT,
SIGTERM) stops a read that waits forever, while a worker blocked in it could never be stopped or joined.
"""

from __future__ import annotations

import io
import os
import stat
from concurrent.futures import Executor, Future
from typing import Any, Callable, Generator, Sequence

import numpy as np

from vitmsn.core.errors import InputError

from .preprocess import ImageError, describe

# Threads that decode ahead of inference (Predictor, vitmsn bench's end-to-end rows). Two keep one
# image decoding while another's pixels are normalised, and no more than that contend for the GIL-free
# C code on the small CPUs this runs on; a server with spare cores can raise it.
DEFAULT_PREPROCESS_WORKERS = 2


def _one(preprocess: Callable[[Any, np.ndarray], Any], image: Any, out: np.ndarray) -> ImageError | None:
    """Preprocess one image into ``out``; its error (never raised) if it cannot be read."""
    try:
        preprocess(image, out)
    except ImageError as exc:
        return exc
    except InputError as exc:  # anything else wrong with this one input
        return ImageError(f"{describe(image)}: {exc}")
    return None


def _may_block(image: Any) -> bool:
    """A pipe, device or socket path, or a file object (other than BytesIO): reading it may wait forever."""
    if isinstance(image, (str, os.PathLike)):
        try:
            mode = os.stat(image).st_mode
        except (OSError, ValueError):  # missing, unreadable, NUL in the name: the worker reports it
            return False
        return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
    return hasattr(image, "read") and not isinstance(image, io.BytesIO)  # bytes in memory never wait


class _Chunk:
    def __init__(self, chunk: Sequence[Any], preprocess: Callable[[Any, np.ndarray], Any], pool: Executor,
                 shape: tuple[int, ...]) -> None:
        self.pixels = np.zeros((len(chunk), *shape), dtype=np.float32)
        here = [_may_block(image) for image in chunk]
        self.futures: list[Future] = []
        try:
            for i, image in enumerate(chunk):
                self.futures.append(Future() if here[i] else pool.submit(_one, preprocess, image, self.pixels[i]))
            for i, image in enumerate(chunk):  # on this thread, where an interrupt can stop a read that never ends
                if here[i]:
                    self.futures[i].set_result(_one(preprocess, image, self.pixels[i]))
        except BaseException:  # an interrupt, a closed pool: nothing of this chunk keeps running
            self.cancel()
            raise

    def result(self) -> tuple[np.ndarray, list[ImageError | None]]:
        return self.pixels, [f.result() for f in self.futures]

    def cancel(self) -> None:
        """Drop what has not started; wait for what has (it writes into ``pixels``)."""
        for f in self.futures:
            f.cancel()
        for f in self.futures:
            if not f.cancelled():
                f.exception()


def preprocess_ahead(chunks: Sequence[Sequence[Any]], preprocess: Callable[[Any, np.ndarray], Any], pool: Executor,
                     shape: tuple[int, ...]) -> Generator[tuple[np.ndarray, list[ImageError | None]], None, None]:
    """``(float32 [n, *shape] pixels, per-image error or None)`` for each chunk, in order, each chunk
    decoding on ``pool`` while the caller works on the one before. Closing the generator early (an
    exception in the caller) cancels the chunk still in flight."""
    ahead = _Chunk(chunks[0], preprocess, pool, shape) if chunks else None
    try:
        for k in range(len(chunks)):
            assert ahead is not None
            current = ahead.result()
            ahead = _Chunk(chunks[k + 1], preprocess, pool, shape) if k + 1 < len(chunks) else None
            yield current
    finally:  # the caller stopped early (an exception, close()) or an interrupt arrived while waiting
        if ahead is not None:
            ahead.cancel()
