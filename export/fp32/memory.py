"""How many images a step can run at once: activation memory of one ViT forward pass against the memory
this process may still use.

The estimate (:func:`activation_bytes`) is per image and linear in the batch. What dominates is
attention: explicit (``math``) attention materialises the ``heads x tokens x tokens`` score matrix of
one layer, a few copies at once (matmul, scale, softmax), so ViT-B/4 (3,137 tokens, 12 heads) needs
about 0.5 GB per copy per image, and a batch of 32 over 20 GB. Measured peaks above the weights
(``benchmarks/scale.md``, B/4 shape, one image, 2 layers, attention ``math``): PyTorch 1.07 GB = 2.3
score matrices, ONNX Runtime (CPU, arena off) 0.68 GB = 1.44; the factors below round those up.
The rest (hidden states, the MLP's intermediate) is what counts for patch-16 shapes.

The memory available (:func:`available_memory`) is the cgroup v2 limit less the cgroup's usage when
there is one, never more than the kernel's ``MemAvailable``, and on a shared machine a user's ceiling
(``VITMSN_MEMORY_LIMIT=14G``) less what the process holds already. Steps use :data:`USABLE_FRACTION` of
it, so that the estimate's error and other processes' growth leave room.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from vitmsn.core.errors import InputError
from vitmsn.core.progress import PeakRss

from vitmsn.export.fp32.model import Attention, ViTMSNArch

# Copies of one layer's score matrix alive at the peak, and of its hidden-sized tensors (q, k, v, context,
# residual, LayerNorm output, attention output) and intermediate-sized ones (MLP up-projection and its GELU).
_SCORE_COPIES = {"pytorch": 2.5, "onnxruntime": 1.6}
_HIDDEN_COPIES = 8
_INTERMEDIATE_COPIES = 2
USABLE_FRACTION = 0.8
LIMIT_VARIABLE = "VITMSN_MEMORY_LIMIT"
GB = 1e9


def activation_bytes(arch: ViTMSNArch, batch: int, *, runtime: str = "onnxruntime", dtype_bytes: int = 4,
                     attention: Attention = "math") -> int:
    """Peak activation memory, in bytes, of one forward pass of ``batch`` images (weights not included).

    ``runtime`` is ``pytorch`` or ``onnxruntime`` (its CPU provider without the memory arena, as the
    checks run it); ``sdpa`` attention in PyTorch never holds the whole score matrix (flash kernels),
    so it counts one copy of it.
    """
    t = arch.num_patches + 1
    scores = arch.num_attention_heads * t * t * (1.0 if attention == "sdpa" and runtime == "pytorch"
                                                 else _SCORE_COPIES[runtime])
    dense = t * (_HIDDEN_COPIES * arch.hidden_size + _INTERMEDIATE_COPIES * arch.intermediate_size)
    return batch * int(dtype_bytes * (scores + dense))


# INT8 calibration (ModelOpt's and ONNX Runtime's) exposes the input of every quantized MatMul as a graph output
# (per layer: the two LayerNorm outputs, the attention context, the GELU output) and holds copies of them while it
# bins them, beside one forward pass; and about 11 copies of the graph whatever the batch. Measured on the B/4 shape
# (ModelOpt entropy calibration, alone): 3.4 GB per image and 3.7 GB fixed; inside an export (the earlier steps'
# freed memory not all returned) batch 4 went past 23 GB, so four copies are counted: 4.2 GB per image.
_CALIBRATION_OUTPUT_COPIES = 4
_CALIBRATION_GRAPH_COPIES = 11


def calibration_bytes(arch: ViTMSNArch, batch: int, graph_bytes: int, *, scores: bool = False) -> int:
    """Peak memory, in bytes, of calibrating ``batch`` images at a time on a graph of ``graph_bytes``; ``scores``:
    the calibration also bins the attention score matrices (ONNX Runtime's, for the CPU flavour, calibrates every
    MatMul's tensors)."""
    t = arch.num_patches + 1
    exposed = arch.num_hidden_layers * (t * (3 * arch.hidden_size + arch.intermediate_size)
                                        + (2 * arch.num_attention_heads * t * t if scores else 0)) * 4
    return (batch * _CALIBRATION_OUTPUT_COPIES * exposed + activation_bytes(arch, batch)
            + _CALIBRATION_GRAPH_COPIES * graph_bytes)


def calibration_batch(arch: ViTMSNArch, images: int, graph_bytes: int, memory: Memory | None = None,
                      preferred: int = 8, *, scores: bool = False) -> tuple[int, str | None]:
    """The INT8 calibration batch: the largest size up to ``preferred`` that divides ``images`` (every image counts
    once) and fits the usable memory, and a note when memory made it smaller; ``(0, why)`` when one image does not
    fit."""
    from vitmsn.calibration import even_batch_size

    memory = memory or available_memory()
    need = [calibration_bytes(arch, b, graph_bytes, scores=scores) for b in range(1, preferred + 2)]
    fits = next((b for b in range(preferred, 0, -1) if need[b - 1] <= memory.usable), 0)
    if fits == 0:
        return 0, (f"calibrating one image needs about {size_text(need[0])}, {size_text(memory.usable)} usable of "
                   f"{memory.describe()}")
    batch = even_batch_size(images, fits)
    if fits >= min(preferred, images):
        return batch, None
    return batch, (f"calibration at batch {batch} instead of {even_batch_size(images, preferred)}: batch "
                   f"{fits + 1} needs about {size_text(need[fits])}, {size_text(memory.usable)} usable of "
                   f"{memory.describe()}")


@dataclass(frozen=True)
class Memory:
    """Bytes this process may still allocate, and where the figure comes from."""

    available: int
    source: str

    @property
    def usable(self) -> int:
        return int(self.available * USABLE_FRACTION)

    def describe(self) -> str:
        return f"{size_text(self.available)} available ({self.source})"


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room(cgroup: Path) -> int | None:
    """cgroup v2 ``memory.max`` less ``memory.current``; None without a limit ("max") or a cgroup v2 mount."""
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        current = int((cgroup / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    try:
        return max(int(limit) - current, 0)
    except ValueError:
        return None


def _ceiling_room(environ: Mapping[str, str]) -> int | None:
    """``VITMSN_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix: a ceiling on this process's RSS on a shared
    machine) less the process's RSS now."""
    text = environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", text, re.IGNORECASE)
    if m is None:
        raise InputError(f"{LIMIT_VARIABLE}={text}: expected a size such as 14G or 800M")
    limit = float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " ")
    return max(int(limit) - PeakRss.current(), 0)


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup"),
                     environ: Mapping[str, str] = os.environ) -> Memory:
    """The smallest of the cgroup's room, ``MemAvailable`` and the room under ``VITMSN_MEMORY_LIMIT`` (when
    none is readable: a generous 8 GB, never 0, and the steps' own errors)."""
    figures = [(v, s) for v, s in ((_cgroup_room(cgroup), "cgroup memory.max less memory.current"),
                                   (_meminfo_available(meminfo), "MemAvailable"),
                                   (_ceiling_room(environ), f"{LIMIT_VARIABLE} less this process's RSS"))
               if v is not None]
    if not figures:
        return Memory(int(8 * GB), "unknown (assumed 8 GB)")
    value, source = min(figures)
    return Memory(value, source)


def largest_batch(arch: ViTMSNArch, budget: int, *, runtime: str = "onnxruntime", dtype_bytes: int = 4,
                  attention: Attention = "math", most: int = 1 << 16) -> int:
    """The largest batch (at most ``most``) whose activations fit in ``budget`` bytes; 0 when one image does not."""
    per_image = activation_bytes(arch, 1, runtime=runtime, dtype_bytes=dtype_bytes, attention=attention)
    return int(min(most, budget // max(per_image, 1)))


def batch_within_memory(arch: ViTMSNArch, wanted: int, *, runtime: str = "onnxruntime",
                        memory: Memory | None = None, attention: Attention = "math") -> int:
    """``wanted``, or the largest batch that fits in the usable memory when that is smaller (at least 1: a
    step that must run one image at a time still runs; :func:`cannot_fit` says when even that is too much).
    For steps that run a model over many images (drift checks, sensitivity, validation)."""
    memory = memory or available_memory()
    return max(1, min(wanted, largest_batch(arch, memory.usable, runtime=runtime, attention=attention)))


def cannot_fit(arch: ViTMSNArch, batch: int, *, runtime: str = "onnxruntime", memory: Memory | None = None,
               attention: Attention = "math") -> str | None:
    """None when ``batch`` images fit in the usable memory; else why not, with the numbers."""
    memory = memory or available_memory()
    need = activation_bytes(arch, batch, runtime=runtime, attention=attention)
    if need <= memory.usable:
        return None
    return (f"{runtime} at batch {batch} needs about {size_text(need)} of activations, "
            f"{size_text(memory.usable)} usable of {memory.describe()}")


def cannot_fit_either(arch: ViTMSNArch, batch: int, *, memory: Memory | None = None,
                      attention: Attention = "math") -> str | None:
    """None when ``batch`` images fit both PyTorch (the reference) and ONNX Runtime; else why not, PyTorch first."""
    memory = memory or available_memory()
    return (cannot_fit(arch, batch, runtime="pytorch", memory=memory, attention=attention)
            or cannot_fit(arch, batch, memory=memory, attention=attention))


def size_text(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1e6:.0f} MB"


def release_memory() -> None:
    """Hand freed memory back to the system between steps: a garbage collection, then glibc's ``malloc_trim``.

    Protobuf and ONNX Runtime free their graphs in many small blocks, which glibc keeps for reuse instead of
    returning them; measured on ONNX Runtime's transformer optimizer (ViT-S graph, 87 MB), the process kept
    330 MB per optimizer pass without it and 10-110 MB with it, and the next pass's peak fell by half. A no-op
    where glibc is absent."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
