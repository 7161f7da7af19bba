"""--fewshot's input: every bad folder exits 2 with one line naming it (no traceback); what is only warned about;
the embedding loop streams (memory bounded by a batch, not by the number of shots)."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vitmsn.core.errors import InputError
from vitmsn.cli.export_cmd import command as export_command
from vitmsn.export.demo.shapes import write_dataset
from vitmsn.export.fewshot.checkpoint import backbone_from_state, backbone_state
from vitmsn.export.fewshot.embed import embed_shots
from vitmsn.export.fewshot.shots import shots_from_csv, shots_from_folders
from vitmsn.export.fp32.checkpoint import load_checkpoint

from checkpoints import TINY_CONFIG, save_transformers


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fewshot_backbone") / "backbone"
    save_transformers(out, classifier=False, **{k: v for k, v in TINY_CONFIG.items() if k != "num_labels"})
    return out


@pytest.fixture(scope="module")
def tiny(backbone_dir: Path):
    ck = load_checkpoint(str(backbone_dir))
    return backbone_from_state(ck, backbone_state(ck, False)), ck.preprocess


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fewshot_images")
    write_dataset(out, per_class=3, split="fewshot", labels=("pentagon", "heart"))
    return out


def _copy(images: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(images, tmp_path / "shots"))


def _export(model: Path | str, tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(export_command, ["--model", str(model), "--engine", "skip", "--out",
                                                 str(tmp_path / "out"), *args])
    return result.exit_code, result.output


def _refused(code: int, output: str, *names: str) -> str:
    """The last line: the one-line error naming ``names``; exit 2; no traceback; --out never written."""
    assert code == 2, output
    assert "Traceback" not in output
    line = output.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for name in names:
        assert name in line, line
    return line


def test_one_class_is_refused(backbone_dir, images, tmp_path):
    shots = _copy(images, tmp_path)
    shutil.rmtree(shots / "heart")
    line = _refused(*_export(backbone_dir, tmp_path, "--fewshot", str(shots)), str(shots), "at least 2 classes")
    assert "'pentagon'" in line and not (tmp_path / "out").exists()


def test_class_folder_without_images_is_refused(backbone_dir, images, tmp_path):
    shots = _copy(images, tmp_path)
    (shots / "star").mkdir()
    (shots / "star" / "notes.txt").write_text("not an image")
    _refused(*_export(backbone_dir, tmp_path, "--fewshot", str(shots)), "star/", "no image file")


def test_class_left_with_no_readable_image_is_refused_even_when_skipping(backbone_dir, images, tmp_path):
    shots = _copy(images, tmp_path)
    for f in (shots / "heart").iterdir():
        f.write_bytes(b"\xff\xd8 truncated")
    _refused(*_export(backbone_dir, tmp_path, "--fewshot", str(shots), "--skip-unreadable"), "'heart'",
             "no readable image")


def test_same_image_under_two_classes_names_both(backbone_dir, images, tmp_path):
    shots = _copy(images, tmp_path)
    src = sorted((shots / "heart").iterdir())[0]
    # the same pixels in another file format: identical once decoded
    Image.open(src).save(shots / "pentagon" / "copy.png") if src.suffix == ".png" else \
        Image.open(src).convert("RGB").save(shots / "pentagon" / "copy.bmp")
    line = _refused(*_export(backbone_dir, tmp_path, "--fewshot", str(shots)), "two classes")
    assert src.name in line and "copy." in line


def test_unreadable_image_is_listed_and_skip_unreadable_goes_on(tiny, backbone_dir, images, tmp_path):
    shots = _copy(images, tmp_path)
    bad = shots / "heart" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _refused(*_export(backbone_dir, tmp_path, "--fewshot", str(shots)), str(bad), "--skip-unreadable")
    model, preprocess = tiny
    found = embed_shots(model, preprocess, shots_from_folders(shots), skip_unreadable=True)
    assert [p for p, _ in found.unreadable] == [bad] and len(found.labels) == 6
    assert any("unreadable" in w for w in found.warnings)


def test_head_is_refused_without_replace_head(images, tmp_path):
    line = _refused(*_export("demo", tmp_path, "--fewshot", str(images)), "--model demo", "--replace-head")
    assert "classifier head" in line


def test_few_shot_flags_need_fewshot(backbone_dir, tmp_path):
    _refused(*_export(backbone_dir, tmp_path, "--skip-unreadable"), "--skip-unreadable", "--fewshot")


def test_folders_and_labels_csv_together_are_refused(backbone_dir, images, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,heart\n")
    _refused(*_export(backbone_dir, tmp_path, "--fewshot", str(images), "--fewshot-labels", str(csv)),
             "--fewshot and --fewshot-labels")


def test_images_outside_any_class_are_refused(backbone_dir, images, tmp_path):
    shots = _copy(images, tmp_path)
    shutil.copy(sorted((shots / "heart").iterdir())[0], shots / "stray.png")
    _refused(*_export(backbone_dir, tmp_path, "--fewshot", str(shots)), "in no class")


def test_labels_csv_contradiction_and_missing_file_name_the_line(backbone_dir, images, tmp_path):
    first = sorted((images / "heart").iterdir())[0].relative_to(images).as_posix()
    csv = images / "labels.csv"
    try:
        csv.write_text(f"path,label\n{first},heart\n{first},pentagon\n")
        _refused(*_export(backbone_dir, tmp_path, "--fewshot-labels", str(csv)), "line 3", "list each image once")
        csv.write_text(f"{first},heart\nheart/missing.png,heart\n")
        _refused(*_export(backbone_dir, tmp_path, "--fewshot-labels", str(csv)), "line 2", "missing.png")
    finally:
        csv.unlink()


def test_labels_csv_reads_paths_relative_to_itself(images, tmp_path):
    csv = tmp_path / "labels.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted(images.rglob("*.*"))] + [f"{images / 'notes.txt'},heart"]
    (images / "notes.txt").write_text("x")
    try:
        csv.write_text("\n".join(rows) + "\n")
        shots = shots_from_csv(csv)
    finally:
        (images / "notes.txt").unlink()
    assert shots.classes == ["heart", "pentagon"] and len(shots.files) == 6 and len(shots.ignored) == 1


def test_duplicates_in_a_class_are_dropped_and_non_images_counted(tiny, images, tmp_path):
    shots = _copy(images, tmp_path)
    src = sorted((shots / "heart").iterdir())[0]
    shutil.copy(src, shots / "heart" / f"zz_copy{src.suffix}")
    (shots / "heart" / "README.txt").write_text("notes")
    model, preprocess = tiny
    found = embed_shots(model, preprocess, shots_from_folders(shots))
    assert found.duplicates == [(shots / "heart" / f"zz_copy{src.suffix}", src)]
    assert found.labels.count("heart") == 3 and found.ignored == 1
    assert any("same image" in w for w in found.warnings)


def test_class_imbalance_over_5x_is_warned(tiny, tmp_path):
    write_dataset(tmp_path, per_class=11, split="fewshot", labels=("heart",))
    write_dataset(tmp_path, per_class=2, split="fewshot", labels=("pentagon",))
    model, preprocess = tiny
    found = embed_shots(model, preprocess, shots_from_folders(tmp_path))
    assert any("imbalance 11:2" in w for w in found.warnings)


def test_embedding_memory_does_not_grow_with_the_number_of_shots(tiny, tmp_path):
    """Pixels live one batch at a time: 40 more shots add their embeddings (32 floats each), not their pixels."""
    model, preprocess = tiny
    write_dataset(tmp_path / "few", per_class=4, split="fewshot", labels=("heart", "pentagon"), formats=("png",))
    write_dataset(tmp_path / "many", per_class=24, split="fewshot", labels=("heart", "pentagon"), formats=("png",))
    peaks = []
    for folder in ("few", "many"):
        shots = shots_from_folders(tmp_path / folder)
        embed_shots(model, preprocess, shots, batch=4)  # warm-up: lazy imports and caches
        tracemalloc.start()
        found = embed_shots(model, preprocess, shots, batch=4)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert found.embeddings.shape == (len(shots.files), 32)
    pixels_per_image = 3 * preprocess.height * preprocess.width * 4
    assert peaks[1] - peaks[0] < 10 * pixels_per_image, peaks  # 40 images held at once would be 40x
    assert np.isfinite(found.embeddings).all()


def test_demo_fewshot_set_is_new_classes_written_reproducibly(tmp_path):
    from vitmsn.export.demo.shapes import FEWSHOT_LABELS, LABELS
    from vitmsn.export.demo.write_images import main

    assert not set(FEWSHOT_LABELS) & set(LABELS) and len(FEWSHOT_LABELS) == 6
    main([str(tmp_path / "a"), "--fewshot", "--per-class", "2"])
    main([str(tmp_path / "b"), "--fewshot", "--per-class", "2"])
    main([str(tmp_path / "held"), "--fewshot", "--per-class", "2", "--split", "fewshot-heldout"])
    a, b, held = (sorted((tmp_path / d).rglob("*.*")) for d in ("a", "b", "held"))
    assert sorted({p.parent.name for p in a}) == sorted(FEWSHOT_LABELS) and len(a) == 12
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert not {p.read_bytes() for p in a} & {p.read_bytes() for p in held}  # the held-out split is other images


def test_labels_csv_over_its_cap_or_not_utf8_is_refused_unread(tmp_path, monkeypatch):
    from vitmsn.export.fewshot import shots

    monkeypatch.setattr(shots, "MAX_CSV_BYTES", 64)
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,heart\n" * 10)  # 120 bytes: /dev/zero or a stray dump would be read no further either
    with pytest.raises(InputError, match=r"--fewshot-labels .*labels.csv: more than 64 bytes; expected one"):
        shots_from_csv(csv)
    csv.write_bytes("\u00e9.png,heart\n".encode("latin-1"))
    with pytest.raises(InputError, match="cannot be read .*save it as UTF-8 CSV"):
        shots_from_csv(csv)
