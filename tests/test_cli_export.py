"""vitmsn-export and vitmsn inspect as users run them: exit codes, messages, the config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitmsn.cli import group
from vitmsn.cli.export_cmd import command as export_command
from vitmsn.config import load_defaults

from checkpoints import TINY_CONFIG, save_transformers


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "ck"
    save_transformers(d, **TINY_CONFIG)
    return d


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / args[0]
    return subprocess.run([str(exe), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_config_file_only_run(tiny_ck: Path, tmp_path: Path) -> None:
    """A pipeline runs `vitmsn-export --precision fp32` with everything else in pyproject.toml."""
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "x"\n\n[tool.vitmsn]\nmodel = "{tiny_ck}"\nout = "artifacts/tiny"\nbatch = "1:4:16"\nengine = "skip"\n')
    proc = _run("vitmsn-export", "--precision", "fp32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "artifacts" / "tiny" / "manifest.json").read_text())
    assert manifest["batch"] == {"min": 1, "opt": 4, "max": 16}
    assert manifest["model"]["source"] == str(tiny_ck)
    inspected = _run("vitmsn", "inspect", "artifacts/tiny", "--verify", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    assert "logits: float32[batch, 3]" in inspected.stdout and "min 1, opt 4, max 16" in inspected.stdout


def test_command_line_beats_config_file(tiny_ck: Path, tmp_path: Path) -> None:
    (tmp_path / "vitmsn.toml").write_text(f'model = "{tiny_ck}"\nbatch = "1:2:4"\nengine = "skip"\n')
    defaults = load_defaults(tmp_path, {"": {p.name for p in export_command.params}}).values
    out = tmp_path / "o"
    result = CliRunner().invoke(export_command, ["--batch", "2:8:8", "--out", str(out)], default_map=defaults)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["batch"] == {"min": 2, "opt": 8, "max": 8}


@pytest.mark.parametrize("args, needle", [
    (["--model", "/no/such/dir"], "--model /no/such/dir: no such directory"),
    (["--precision", "fp8"], "--precision fp8: unknown"),
    (["--batch", "8:1:32"], "1 <= min <= opt <= max"),
    (["--batch", "eight"], "MIN:OPT:MAX"),
    (["--opset", "12"], "--opset 12: unsupported"),
    (["--calib-images", "/no/such/images"], "--calib-images /no/such/images: no such directory"),
    (["--int8-max-tries", "-1"], "--int8-max-tries"),
    (["--validate-images", "/no/such/images"], "--validate-images /no/such/images: no such directory"),
    ([], None),
])
def test_bad_usage_exits_2_with_a_message(tiny_ck: Path, tmp_path: Path, args: list[str], needle: str | None) -> None:
    base = [] if "--model" in args else ["--model", str(tiny_ck)]
    if not args:  # no model at all
        base = []
    result = CliRunner().invoke(export_command, base + args + ["--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert (needle or "--model is required") in result.output
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_unknown_config_key_exits_2(tmp_path: Path) -> None:
    (tmp_path / "vitmsn.toml").write_text('model = "demo"\nprecission = "fp16"\n')
    proc = _run("vitmsn-export", cwd=tmp_path)
    assert proc.returncode == 2
    assert "vitmsn.toml: unknown key 'precission'" in proc.stderr


def test_failed_check_exits_1(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_transformers(tmp_path / "ck", **TINY_CONFIG)
    state = load_file(str(tmp_path / "ck" / "model.safetensors"))
    state["classifier.bias"][0] = float("inf")
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    result = CliRunner().invoke(export_command, ["--model", str(tmp_path / "ck"), "--out", str(tmp_path / "o"), "--engine", "skip"])
    assert result.exit_code == 1
    assert "onnxruntime_parity" in result.output
    assert (tmp_path / "o" / "report.md").is_file()


def test_inspect_missing_dir_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(group, ["inspect", str(tmp_path / "none")])
    assert result.exit_code == 2 and "not an artifacts directory" in result.output


def test_inspect_detects_tampered_file(tiny_ck: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert CliRunner().invoke(export_command, ["--model", str(tiny_ck), "--out", str(out), "--engine", "skip"]).exit_code == 0
    with open(out / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(group, ["inspect", str(out), "--verify"])
    assert result.exit_code == 2 and "does not match the manifest" in result.output


def test_every_option_sets_the_field_of_its_name() -> None:
    """Options are declared once: each click parameter of vitmsn-export reaches the ExportOptions/EngineOptions field
    or gate of its name, with the value given on the command line (a parameter that lands nowhere is an error)."""
    from vitmsn.cli.export_cmd import export_options

    ctx = export_command.make_context("vitmsn-export", [
        "--model", "demo", "--revision", "v1", "--precision", "FP16", "--out", "o", "--calib-samples", "7",
        "--batch", "1:2:4", "--parity-batch", "3,1", "--opset", "17", "--workspace", "1K", "--builder-opt-level", "2",
        "--hardware-compat", "ampere-plus", "--version-compat", "--aot-targets", "sm86,sm89", "--min-cosine", "0.5",
        "--alpha-background", "1,2,3", "--int8-exclude", "block:1", "--no-fp32-cpu", "-v"])
    options = export_options(dict(ctx.params))
    assert (options.model, options.revision, options.precisions, options.out) == ("demo", "v1", ("fp32", "fp16"), Path("o"))
    assert (options.calib_samples, options.batch.max, options.opset, options.int8_exclude) == (7, 4, 17, ("block:1",))
    assert options.parity_batch == (1, 3)
    assert (options.alpha_background, options.fp32_cpu, options.verbose) == ((1, 2, 3), False, True)
    engine = options.engine_options
    assert (engine.workspace_bytes, engine.builder_optimization_level, engine.hardware_compatibility,
            engine.version_compatible, engine.aot_targets) == (1024, 2, "ampere-plus", True, ("SM86", "SM89"))
    assert {t.min_cosine for t in options.gates.thresholds.values()} == {0.5}
