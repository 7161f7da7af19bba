"""Resource bounds on inputs (issue 14, item 4): every read is capped, decoding is budgeted from the
image header, and a checkpoint's config.json sizes are checked before anything is allocated.

The CLI runs are real subprocesses whose peak RSS is measured (``getrusage(RUSAGE_CHILDREN)`` in
a small wrapper process, so no other child of pytest counts). The bounds are generous (about twice
what the bounded runs use) and far below what an unbounded read would take: /dev/zero has no end,
the sparse file is 5 GiB, the 16-bit PNG decoded to ~1.2 GB before, and the oversized config
would have allocated ~2.7 GB of parameters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vitmsn.core.errors import InputError

from checkpoints import save_transformers

_MEASURED = """
import resource, subprocess, sys
stdin = open(sys.argv[1], "rb") if sys.argv[1] != "-" else None
code = subprocess.run(sys.argv[2:], stdin=stdin).returncode
print(f"PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def _run_measured(args: list[str], stdin: str = "-", timeout: float = 300) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MiB) of ``python args...`` run as a grandchild."""
    proc = subprocess.run([sys.executable, "-c", _MEASURED, stdin, sys.executable, *args],
                          capture_output=True, text=True, timeout=timeout)
    peak = next(int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB="))
    return proc.returncode, proc.stdout, proc.stderr, peak / 1024


def _predict(artifacts: Path, *args: str) -> list[str]:
    return ["-c", "from vitmsn.cli import main; main()", "predict", str(artifacts), *args,
            "--backend", "onnxruntime", "--precision", "fp32", "--json"]


@pytest.fixture(scope="module")
def png16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8000x8000 16-bit grey PNG: 124 KB on disk, 128 MB of raster (inside the 64 MP limit)."""
    path = tmp_path_factory.mktemp("bomb") / "grey16.png"
    Image.fromarray(np.zeros((8000, 8000), dtype=np.uint16)).save(path, format="PNG")
    assert path.stat().st_size < 200_000 and Image.open(path).mode == "I;16"
    return path


def test_predict_refuses_endless_stdin_huge_file_and_16bit_bomb_in_bounded_memory(
        demo_artifacts: Path, heldout_images: Path, png16: Path, tmp_path: Path) -> None:
    good = sorted(heldout_images.glob("*/*.jpg"))[0]
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as f:
        f.truncate(5 * 2**30)  # 5 GiB, no blocks on disk
    code, out, err, peak_mib = _run_measured(_predict(demo_artifacts, "-", str(sparse), str(png16), str(good)),
                                             stdin="/dev/zero")
    assert code == 2, err
    entries = {e["input"]: e for e in json.loads(out)}
    assert "more than 67108864 bytes" in entries["-"]["error"] and "--max-image-bytes" in entries["-"]["error"]
    assert f"{5 * 2**30} bytes is over the 67108864-byte limit" in entries[str(sparse)]["error"]
    bomb = entries[str(png16)]["error"]
    assert "8000x8000 I;16" in bomb and "decode budget of 96 MiB" in bomb and "--max-decode-mb" in bomb, bomb
    assert entries[str(good)]["predictions"][0]["score"] > 0  # the good image is still predicted
    assert "Traceback" not in err
    print(f"peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 600, f"predict peaked at {peak_mib:.0f} MiB"


def test_decode_budget_is_what_refused_the_16bit_png(demo_artifacts: Path, png16: Path) -> None:
    code, out, err, peak_mib = _run_measured(_predict(demo_artifacts, str(png16), "--max-decode-mb", "130"))
    assert code == 0, err  # raised above 122 MiB, the same file is decoded and predicted
    assert json.loads(out)[0]["predictions"]
    print(f"peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 800, f"decoding the 16-bit PNG peaked at {peak_mib:.0f} MiB"


def test_image_cap_is_an_option(demo_artifacts: Path, heldout_images: Path) -> None:
    good = sorted(heldout_images.glob("*/*.jpg"))[0]
    code, out, err, _ = _run_measured(_predict(demo_artifacts, "-", "--max-image-bytes", "100"), stdin=str(good))
    assert code == 2 and "more than 100 bytes" in json.loads(out)[0]["error"], out + err


# ---- checkpoint config.json ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "ck"
    save_transformers(d)
    return d


def _with_config(source: Path, dest: Path, **changes: Any) -> Path:
    dest.mkdir()
    for f in source.iterdir():
        (dest / f.name).symlink_to(f)
    (dest / "config.json").unlink()
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


BAD_CONFIGS = [
    ({"hidden_size": 65536}, "hidden_size 65536 is over 16384"),
    ({"num_hidden_layers": 10**6}, "num_hidden_layers 1000000 is over 1024"),
    ({"patch_size": 0}, "patch_size must be positive, got 0"),
    ({"num_attention_heads": 0}, "num_attention_heads must be positive, got 0"),
    ({"num_attention_heads": 5}, "hidden_size 32 is not a multiple of num_attention_heads 5"),
    ({"image_size": 30}, "image_size 30 is not a multiple of patch_size 8"),
    ({"intermediate_size": -64}, "intermediate_size must be positive, got -64"),
    ({"hidden_size": "32"}, "hidden_size must be an integer, got '32'"),
    ({"layer_norm_eps": -1}, "layer_norm_eps must be a number between 0 and 1"),
    ({"hidden_size": 64, "num_attention_heads": 4}, "weights do not match config.json"),
]


@pytest.mark.parametrize("changes,message", BAD_CONFIGS, ids=[m.split(" ")[0] + "-" + str(i) for i, (_, m) in enumerate(BAD_CONFIGS)])
def test_bad_config_values_are_named(tiny_checkpoint: Path, tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint

    bad = _with_config(tiny_checkpoint, tmp_path / "bad", **changes)
    with pytest.raises(InputError) as info:
        load_checkpoint(str(bad))
    text = str(info.value)
    assert message in text, text
    assert "config.json" in text or "model.safetensors" in text, text


def test_bad_config_exits_2_from_the_export_cli(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vitmsn.cli.export_cmd import command

    bad = _with_config(tiny_checkpoint, tmp_path / "bad", patch_size=0)
    result = CliRunner().invoke(command, ["--model", str(bad), "--out", str(tmp_path / "out"), "--engine", "skip"])
    assert result.exit_code == 2, result.output
    assert f"{bad / 'config.json'}: patch_size must be positive" in result.output and "Traceback" not in result.output


def test_config_is_checked_against_the_weights_before_allocating(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # Sane-looking sizes that do not match the 32-wide weights: building the model from them
    # would allocate ~2.7 GB (24 layers of hidden 1536); the shapes are compared first.
    bad = _with_config(tiny_checkpoint, tmp_path / "big", hidden_size=1536, num_hidden_layers=24,
                       num_attention_heads=12, intermediate_size=6144)
    script = ("import sys\nfrom vitmsn.export.fp32.checkpoint import load_checkpoint\nfrom vitmsn.core.errors import InputError\n"
              f"try:\n    load_checkpoint({str(bad)!r})\nexcept InputError as exc:\n    print(exc)\n    sys.exit(2)\n")
    code, out, err, peak_mib = _run_measured(["-c", script])
    assert code == 2, err
    assert "weights do not match config.json: missing tensors: encoder.layer." in out, out
    assert "query.weight (checkpoint (32, 32), config expects (1536, 1536))" in out, out
    print(f"peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 1000, f"loading peaked at {peak_mib:.0f} MiB"


def test_huge_config_json_is_refused_unread(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint

    bad = _with_config(tiny_checkpoint, tmp_path / "bad")
    with open(bad / "config.json", "r+b") as f:
        f.truncate(5 * 2**30)  # sparse: 5 GiB of NULs after the real JSON
    with pytest.raises(InputError, match=r"config.json: 5368709120 bytes, over the 67108864-byte limit"):
        load_checkpoint(str(bad))
