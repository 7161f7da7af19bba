"""benchmarks/int8_cpu.py --weight-ranges: bad values and option combinations are refused before anything
slow starts (exit 2, naming the option and what to give), and a good list keeps its order."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "int8_cpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_int8_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("value, says", [
    ("8bit,6bit", "6bit is not a weight range: give a comma-separated list of 8bit and 7bit"),
    (",", "',' is not a weight range: give a comma-separated list of 8bit and 7bit"),
    ("8bit,8bit", "'8bit,8bit' names a weight range twice"),
])
def test_bad_weight_ranges_exit_2_naming_the_option(bench, capsys, value: str, says: str) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--weight-ranges", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"argument --weight-ranges: {says}" in err and "Traceback" not in err


def test_weight_ranges_keep_their_order(bench) -> None:
    assert bench.weight_ranges("7bit, 8bit") == ("7bit", "8bit")


def test_accuracy_options_are_checked_before_quantizing(bench, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--accuracy-artifacts", str(tmp_path), "--heldout", str(tmp_path)])
    assert exc.value.code == 2 and "--accuracy-artifacts needs --weight-ranges" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench.main(["--weight-ranges", "8bit,7bit", "--accuracy-artifacts", str(tmp_path), "--heldout", str(tmp_path)])
    assert exc.value.code == 2 and f"--accuracy-artifacts {tmp_path}: no manifest.json there" in capsys.readouterr().err
