"""The config file: found going up from the working directory, named, paths relative to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vitmsn.config import find_config, load_defaults
from vitmsn.core.errors import InputError

EXPORT = {"": {"model", "out", "precision", "calib_images", "batch"}}
VALIDATE = {"validate": {"artifacts", "images", "quiet"}}


def test_nearest_file_going_up_wins(tmp_path: Path) -> None:
    (tmp_path / "vitmsn.toml").write_text('model = "far"\n')
    mid = tmp_path / "a"
    (mid / "b" / "c").mkdir(parents=True)
    (mid / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.vitmsn]\nmodel = "near"\n')
    found = load_defaults(mid / "b" / "c", EXPORT)
    assert found.values["model"] == "near" and found.path == (mid / "pyproject.toml").resolve()
    assert found.describe() == f"config: {(mid / 'pyproject.toml').resolve()}"


def test_pyproject_without_the_table_is_passed_over(tmp_path: Path) -> None:
    (tmp_path / "vitmsn.toml").write_text('model = "root"\n')
    sub = tmp_path / "pkg"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.ruff]\nline-length = 99\n')
    found = find_config(sub)
    assert found is not None and found.path == (tmp_path / "vitmsn.toml").resolve()


def test_vitmsn_toml_beats_pyproject_in_the_same_directory(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.vitmsn]\nmodel = "pyproject"\n')
    (tmp_path / "vitmsn.toml").write_text('model = "own"\n')
    assert load_defaults(tmp_path, EXPORT).values["model"] == "own"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "vitmsn.toml").write_text('model = "ckpt"\nout = "artifacts/x"\ncalib-images = "data/calib"\n'
                                          'precision = ["fp16"]\n[validate]\nimages = "data/val"\n')
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    values = load_defaults(sub, {**EXPORT, **VALIDATE}).values
    assert values["model"] == str(tmp_path / "ckpt")  # a directory beside the file, not under the cwd
    assert values["out"] == str(tmp_path / "artifacts" / "x")
    assert values["calib_images"] == str(tmp_path / "data" / "calib")
    assert values["precision"] == ["fp16"]
    # every vitmsn command takes ARTIFACTS from the top-level out
    assert values["validate"] == {"images": str(tmp_path / "data" / "val"), "artifacts": str(tmp_path / "artifacts" / "x")}


def test_hub_ids_and_demo_stay_as_written(tmp_path: Path) -> None:
    (tmp_path / "vitmsn.toml").write_text('model = "facebook/vit-msn-small"\n')
    assert load_defaults(tmp_path, EXPORT).values["model"] == "facebook/vit-msn-small"
    (tmp_path / "vitmsn.toml").write_text('model = "demo"\n')
    assert load_defaults(tmp_path, EXPORT).values["model"] == "demo"


def test_no_file_anywhere_gives_no_defaults(tmp_path: Path) -> None:
    # tmp_path's parents (/tmp, /) hold no vitmsn config on these machines; a sub-directory proves the walk stops cleanly
    found = load_defaults(tmp_path, EXPORT)
    assert found.values == {} and found.path is None and found.describe() is None


def test_unknown_key_names_the_file_found_above(tmp_path: Path) -> None:
    (tmp_path / "vitmsn.toml").write_text('modle = "demo"\n')
    sub = tmp_path / "s"
    sub.mkdir()
    with pytest.raises(InputError, match=r"vitmsn\.toml: unknown key 'modle'"):
        load_defaults(sub, EXPORT)


@pytest.mark.parametrize("name, text, key, found, expected", [
    ("vitmsn.toml", 'tool = "x"\n', "'tool'", "a string", "a table"),
    ("pyproject.toml", "tool = 5\n", "'tool'", "an integer", "a table"),
    ("pyproject.toml", "[tool]\nvitmsn = 5\n", "'tool.vitmsn'", "an integer", "a table"),
    ("vitmsn.toml", "out = 5\n", "'out'", "an integer", "a string"),
    ("vitmsn.toml", "validate = 3\n", "'validate'", "an integer", "a table"),
])
@pytest.mark.parametrize("entry, args", [("main", ["inspect"]), ("export_main", ["--precision", "fp16"])])
def test_wrong_shape_is_one_line_naming_file_key_and_types(tmp_path: Path, name: str, text: str, key: str, found: str,
                                                           expected: str, entry: str, args: list[str]) -> None:
    (tmp_path / name).write_text(text)
    sub = tmp_path / "deep"
    sub.mkdir()
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.argv[0] = 'x'; from vitmsn.cli import {entry}; {entry}()",
                           *args], capture_output=True, text=True, timeout=120, cwd=sub)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / name}: key {key} is {found}"), proc.stderr
    assert lines[0].endswith(f"expected {expected}"), proc.stderr


@pytest.mark.parametrize("text, message", [
    ("opset = \"x\"\n", "key 'opset' is a string ('x'); expected an integer"),
    ("fp16-io = 1\n", "key 'fp16-io' is an integer (1); expected a boolean (true or false)"),
    ("precision = [\"fp16\", 3]\n", "key 'precision' holds an integer (3); expected a list of strings"),
    ("min-cosine = true\n", "key 'min-cosine' is a boolean (true or false) (True); expected a number or a string or a table"),
    ("[validate]\nimages = 3\n", "key 'validate.images' is an integer (3); expected a string"),
])
def test_every_option_is_type_checked_from_its_click_declaration(tmp_path: Path, text: str, message: str) -> None:
    from vitmsn.cli.export_cmd import command as export_command
    from vitmsn.cli.options import config_keys
    from vitmsn.cli.validate import command as validate_command

    (tmp_path / "vitmsn.toml").write_text(text)
    with pytest.raises(InputError) as caught:
        load_defaults(tmp_path, {"": config_keys(export_command), "validate": config_keys(validate_command)})
    assert str(caught.value) == f"{tmp_path / 'vitmsn.toml'}: {message}"


def test_right_types_pass_and_one_value_is_a_list_of_one(tmp_path: Path) -> None:
    from vitmsn.cli.export_cmd import command as export_command
    from vitmsn.cli.options import config_keys

    (tmp_path / "vitmsn.toml").write_text('precision = "int8"\nmin-cosine = 0.9\nopset = 18\nworkspace = "2G"\n'
                                          'fp16-io = true\nheartbeat = 5\n')
    values = load_defaults(tmp_path, {"": config_keys(export_command)}).values
    assert values == {"precisions": ["int8"], "min_cosine": 0.9, "opset": 18, "workspace_bytes": "2G", "fp16_io": True,
                      "heartbeat": 5}
