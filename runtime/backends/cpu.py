"""What this x86 CPU computes natively, from the flags the kernel reports (/proc/cpuinfo).

* BF16: ``avx512_bf16`` or AMX (``amx_bf16``): OpenVINO's BF16 inference precision pays;
* VNNI: ``avx512_vnni``, ``avx_vnni`` or AMX (``amx_int8``): u8 x s8 dot products accumulate in
  int32 (``vpdpbusd``). Without it ONNX Runtime's u8 x s8 path multiplies pairs into int16
  (``vpmaddubsw``), which saturates with full-range (8-bit) INT8 weights.
"""

from __future__ import annotations

import os
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_capable(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes BF16 natively (AVX512_BF16 or AMX-BF16)."""
    return any(f in (cpu_flags() if flags is None else flags) for f in BF16_FLAGS)


def vnni_capable(flags: frozenset[str] | None = None) -> bool:
    """True when u8 x s8 dot products accumulate without int16 saturation (VNNI or AMX-INT8)."""
    return any(f in (cpu_flags() if flags is None else flags) for f in VNNI_FLAGS)
