"""The CPU's flags as /proc/cpuinfo lists them, read independently of the code under test (which asks PyTorch,
OpenVINO or its own parser), so that a test's expectation about this machine does not come from the product."""

from __future__ import annotations

from pathlib import Path


def cpuinfo_flags() -> set[str]:
    """x86 ``flags`` or ARM ``Features`` of the first CPU listed; empty where there is no /proc/cpuinfo."""
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.exists() else ""
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                     if line.startswith(("flags", "Features"))), []))
