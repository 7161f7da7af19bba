"""The config file: found going up from the working directory, named, paths relative to it."""

from __future__ import annotations

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
