"""Paths that travel: the manifest's checkpoint works from any directory; local-looking paths and uncached hub
ids fail with messages that say what to do (and name the option the command really has)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vitmsn.cli.export_cmd import command as export_command
from vitmsn.cli.validate import command as validate_command
from vitmsn.core.errors import InputError
from vitmsn.export.fp32.hub import resolve_source

from checkpoints import TINY_CONFIG, save_transformers


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint exported with a RELATIVE --model from its parent directory."""
    root = tmp_path_factory.mktemp("paths")
    save_transformers(root / "ck", **TINY_CONFIG)
    cwd = Path.cwd()
    try:
        import os

        os.chdir(root)
        result = CliRunner().invoke(export_command, ["--model", "ck", "--out", "art", "--engine", "skip",
                                                     "--no-fp32-cpu"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root / "art"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def test_manifest_records_the_absolute_checkpoint(exported: Path) -> None:
    model = json.loads((exported / "manifest.json").read_text())["model"]
    assert model["source"] == "ck"
    assert Path(model["directory"]).is_absolute() and Path(model["directory"]) == exported.parent / "ck"
    assert len(model["checkpoint_sha256"]) == 64


def test_validate_works_from_another_directory(exported: Path, images: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # 'ck' does not exist here
    result = CliRunner().invoke(validate_command, [str(exported), "--images", str(images), "--out", str(tmp_path / "r"),
                                                   "--quiet"])
    # 4 images decide no gate: the run ends inconclusive (exit 1), having loaded the reference and written its report
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("INCONCLUSIVE: "), result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["reference"]["checkpoint"] == str(exported.parent / "ck")
    assert report["images"]["evaluated"] == 4 and report["results"]  # every graph ran against that reference


def test_uncached_hub_id_in_validate_says_how_to_fetch_and_never_names_model(
        exported: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    art = tmp_path / "art"
    shutil.copytree(exported, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["model"].update(source="someone/not-cached", directory=str(tmp_path / "gone"))
    (art / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = CliRunner().invoke(validate_command, [str(art), "--images", str(images), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "someone/not-cached: no such directory" in result.output and "HF_HUB_OFFLINE" in result.output
    assert "--model" not in result.output and "--checkpoint" in result.output


@pytest.mark.parametrize("source", ["ckpt/nope", "./nope", "../x/y", "a/b/c", "~/no-such-checkpoint-dir"])
def test_local_looking_path_is_no_such_directory(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ckpt").mkdir()  # "exists partially": the first folder is here
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # online: a hub id would be downloaded, a path never is
    with pytest.raises(InputError, match=r"no such directory") as err:
        resolve_source(source)
    assert "download" not in str(err.value)


def test_uncached_hub_id_offline_says_how_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError) as err:
        resolve_source("facebook/vit-msn-small")
    text = str(err.value)
    assert text.startswith("--model facebook/vit-msn-small: no such directory, and as a hub id it is not in the local "
                           f"Hugging Face cache ({tmp_path / 'hf' / 'hub'}) and HF_HUB_OFFLINE is set")
    assert "run once with network access" in text


def test_hub_id_found_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "hub" / "models--someone--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert resolve_source("someone/cached") == snapshot.resolve()
