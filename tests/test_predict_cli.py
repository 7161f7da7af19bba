"""`vitmsn predict`: the readable table, the contract's --json, per-image errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime_fixtures import Exported, photo, rt_cls, rt_feat, write_bad_files  # noqa: F401
from vitmsn.cli import group
from vitmsn.runtime import Predictor


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cli_images")
    files = {}
    for name, seed in (("a.jpg", 1), ("b.png", 2)):
        files[name] = out / name
        photo(200, 150, seed=seed).save(files[name])
    files.update(write_bad_files(out))
    return files


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(group, ["predict", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_json_follows_the_contract(rt_cls: Exported, images: dict[str, Path]) -> None:
    a, b = str(images["a.jpg"]), str(images["b.png"])
    code, out, _ = invoke(str(rt_cls.artifacts), a, b, "--json", "--top-k", "3")
    assert code == 0
    entries = json.loads(out)
    assert [e["input"] for e in entries] == [a, b]
    with Predictor.from_artifacts(rt_cls.artifacts) as p:
        expected = p.predict([a, b], top_k=3)
    for entry, preds in zip(entries, expected):
        assert set(entry) == {"input", "predictions"}
        assert entry["predictions"] == [{"label": x.label, "index": x.index, "score": x.score} for x in preds]


def test_table_is_the_default(rt_cls: Exported, images: dict[str, Path]) -> None:
    code, out, err = invoke(str(rt_cls.artifacts), str(images["a.jpg"]), "--top-k", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["image", "#", "label", "score"]
    assert lines[2].startswith(str(images["a.jpg"])) and "class_" in lines[2]
    assert len(lines) == 4  # header, rule, two predictions
    assert "openvino (CPU, inference precision f32) fp32" in err  # auto prefers OpenVINO on an x86 CPU


def test_an_unreadable_image_gets_its_own_entry_and_exit_code_2(rt_cls: Exported, images: dict[str, Path]) -> None:
    inputs = [str(images["a.jpg"]), str(images["truncated.jpg"]), str(images["text.jpg"]), str(images["b.png"]),
              str(images["empty.jpg"]), "missing.jpg"]
    code, out, err = invoke(str(rt_cls.artifacts), *inputs, "--json")
    assert code == 2
    entries = json.loads(out)
    assert [e["input"] for e in entries] == inputs
    assert [("error" in e) for e in entries] == [False, True, True, False, True, True]
    assert "truncated" in entries[1]["error"] and "not a readable image" in entries[2]["error"]
    assert "empty file" in entries[4]["error"] and "no such file" in entries[5]["error"]
    assert len(entries[0]["predictions"]) == 5 and len(entries[3]["predictions"]) == 5
    assert "4 of 6 input(s) could not be read" in err
    code, out, _ = invoke(str(rt_cls.artifacts), str(images["a.jpg"]), str(images["text.jpg"]))
    assert code == 2 and "error" in out and "not a readable image" in out


def test_bad_usage_exits_2_with_a_message(rt_cls: Exported, rt_feat: Exported, images: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = invoke(str(tmp_path / "nowhere"), str(images["a.jpg"]))
    assert code == 2 and "not an artifacts directory" in err
    code, _, err = invoke(str(rt_cls.artifacts), str(images["a.jpg"]), "--precision", "int8")
    assert code == 2 and "precision 'int8' was not exported" in err
    code, _, err = invoke(str(rt_feat.artifacts), str(images["a.jpg"]))
    assert code == 2 and "use embed()" in err
    code, _, err = invoke(str(rt_cls.artifacts))
    assert code == 2 and "no IMAGE given" in err  # ARTIFACTS alone (ARTIFACTS may come from the config file)


def test_the_installed_command_reads_stdin_and_sets_the_exit_code(rt_cls: Exported, images: dict[str, Path]) -> None:
    cmd = [sys.executable, "-c", "from vitmsn.cli import main; main()", "predict", str(rt_cls.artifacts), "-",
           str(images["bomb.png"]), "--json", "--top-k", "1"]
    result = subprocess.run(cmd, input=images["a.jpg"].read_bytes(), capture_output=True, timeout=120)
    assert result.returncode == 2, result.stderr
    entries = json.loads(result.stdout)
    assert entries[0]["input"] == "-" and len(entries[0]["predictions"]) == 1
    assert "too large to decode safely" in entries[1]["error"]


def test_draft_flag_uses_the_draft_decoder(rt_cls: Exported, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    photo(640, 480, seed=7).save(big, quality=90)
    code, out, _ = invoke(str(rt_cls.artifacts), str(big), "--json", "--top-k", "3", "--draft")
    assert code == 0
    scores = [x["score"] for x in json.loads(out)[0]["predictions"]]
    expected = {}
    for draft in (False, True):
        with Predictor.from_artifacts(rt_cls.artifacts, draft=draft) as p:
            expected[draft] = [x.score for x in p.predict(str(big), top_k=3)]
    assert scores == expected[True]
    assert max(abs(a - b) for a, b in zip(expected[True], expected[False])) > 1e-6  # draft really decodes differently
