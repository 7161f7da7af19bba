"""Checkpoint loading: every layout and naming scheme, and every kind of bad input."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitmsn.core.errors import InputError
from vitmsn.export.fp32.checkpoint import canonical_key, load_checkpoint

from checkpoints import TINY_CONFIG, save_transformers, transformers_outputs


@pytest.mark.parametrize("label, shown", [("tri\nangle", "\\n"), ("tri\rangle", "\\r"), ("tri\u2028angle", "\\u2028"),
                                          ("tri\x85angle", "\\x85")], ids=["LF", "CR", "U+2028", "NEL"])
def test_labels_with_control_characters_are_refused(tmp_path: Path, label: str, shown: str) -> None:
    """labels.txt, Triton and every log show one label per line: an export refuses a label that would break it."""
    from vitmsn.export.demo import CHECKPOINT_DIR

    d = tmp_path / "ck"
    shutil.copytree(CHECKPOINT_DIR, d)
    config = json.loads((d / "config.json").read_text())
    config["id2label"]["2"] = label
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as info:
        load_checkpoint(str(d))
    message = str(info.value)
    assert str(d / "config.json") in message and f"id2label 2" in message and shown in message, message


def _outputs_equal(ck_dir: Path, reference: torch.nn.Module, image_size: int = 32) -> None:
    ck = load_checkpoint(str(ck_dir))
    x = torch.randn(2, 3, image_size, image_size)
    expected = transformers_outputs(reference, x)
    with torch.no_grad():
        got = dict(zip(expected, ck.build_model()(x)))
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5), name


@pytest.fixture()
def classifier_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    d = tmp_path / "ck"
    return d, save_transformers(d)


def test_save_pretrained_layout_loads(classifier_dir) -> None:
    d, ref = classifier_dir
    # transformers 5.x writes 4.x names on disk, with the vit. prefix on some keys only.
    keys = set(load_file(str(d / "model.safetensors")))
    assert any(k.startswith("encoder.layer.0.attention.attention.query") for k in keys)
    assert any(k.startswith("vit.embeddings") for k in keys)
    _outputs_equal(d, ref)
    assert load_checkpoint(str(d)).labels == {i: f"class_{i}" for i in range(3)}


@pytest.mark.parametrize("scheme", ["5x", "4x-prefixed", "4x-unprefixed"])
def test_key_naming_schemes(classifier_dir, tmp_path: Path, scheme: str) -> None:
    d, ref = classifier_dir
    out = tmp_path / scheme
    shutil.copytree(d, out)
    if scheme == "5x":
        state = {k: v.contiguous() for k, v in ref.state_dict().items()}  # in-memory 5.x names
        assert any(".q_proj." in k for k in state)
    else:
        state = load_file(str(d / "model.safetensors"))
        if scheme == "4x-prefixed":
            state = {k if k.startswith(("vit.", "classifier.")) else "vit." + k: v for k, v in state.items()}
        else:
            state = {k[4:] if k.startswith("vit.") else k: v for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"))
    _outputs_equal(out, ref)


def test_canonical_key_maps_5x_names() -> None:
    assert canonical_key("vit.layers.3.attention.q_proj.weight") == "encoder.layer.3.attention.attention.query.weight"
    assert canonical_key("layers.0.mlp.fc1.bias") == "encoder.layer.0.intermediate.dense.bias"
    assert canonical_key("layers.0.mlp.fc2.bias") == "encoder.layer.0.output.dense.bias"
    assert canonical_key("vit.layers.1.attention.o_proj.weight") == "encoder.layer.1.attention.output.dense.weight"
    assert canonical_key("classifier.weight") == "classifier.weight"


def test_backbone_checkpoint_is_feature_extraction(tmp_path: Path) -> None:
    ref = save_transformers(tmp_path, classifier=False)
    ck = load_checkpoint(str(tmp_path))
    assert ck.task == "feature-extraction" and ck.labels == {}
    _outputs_equal(tmp_path, ref)


def test_sharded_safetensors(tmp_path: Path) -> None:
    from transformers import ViTMSNForImageClassification

    ref = save_transformers(tmp_path / "single")
    ViTMSNForImageClassification.from_pretrained(tmp_path / "single").save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    _outputs_equal(tmp_path / "sharded", ref)


def test_pytorch_model_bin_with_weights_only(classifier_dir, tmp_path: Path) -> None:
    d, ref = classifier_dir
    out = tmp_path / "bin"
    out.mkdir()
    shutil.copy(d / "config.json", out)
    torch.save(load_file(str(d / "model.safetensors")), out / "pytorch_model.bin")
    _outputs_equal(out, ref)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_in_bin_is_refused(classifier_dir, tmp_path: Path) -> None:
    d, _ = classifier_dir
    out = tmp_path / "evil"
    out.mkdir()
    shutil.copy(d / "config.json", out)
    with open(out / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(InputError, match=r"pytorch_model\.bin.*weights_only"):
        load_checkpoint(str(out))


def test_hub_id_from_local_cache(classifier_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d, ref = classifier_dir
    cache = tmp_path / "hub"
    repo = cache / "models--acme--vit-msn-tiny"
    shutil.copytree(d, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    ck = load_checkpoint("acme/vit-msn-tiny")
    assert ck.directory == repo / "snapshots" / "0123abcd"


def test_hub_id_missing_offline_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"acme/absent.*not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        load_checkpoint("acme/absent")


def test_missing_preprocessor_config_uses_documented_default(classifier_dir) -> None:
    d, _ = classifier_dir
    ck = load_checkpoint(str(d))
    assert ck.preprocess_source.startswith("default")
    assert (ck.preprocess.height, ck.preprocess.image_mean) == (32, (0.5, 0.5, 0.5))


def test_preprocessor_config_is_read(tmp_path: Path) -> None:
    pre = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 3, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
           "image_std": [0.229, 0.224, 0.225]}
    save_transformers(tmp_path, preprocessor=pre)
    ck = load_checkpoint(str(tmp_path))
    assert ck.preprocess_source == "preprocessor_config.json"
    assert ck.preprocess.resample == 3 and ck.preprocess.image_std == (0.229, 0.224, 0.225)


# ---- bad input: each names the file and the offending keys ------------------------------------
def _mutate_weights(d: Path, fn) -> None:
    state = load_file(str(d / "model.safetensors"))
    save_file(fn(dict(state)), str(d / "model.safetensors"))


@pytest.mark.parametrize("case, pattern", [
    ("missing_dir", r"no such directory"),
    ("file_not_dir", r"is a file"),
    ("no_weights", r"no weights found"),
    ("wrong_model_type", r"model_type 'bert' is not a ViTMSN"),
    ("bad_json", r"config\.json: unreadable JSON"),
    ("missing_tensor", r"missing tensors: encoder\.layer\.1\.output\.dense\.weight"),
    ("unexpected_tensor", r"unexpected tensors: encoder\.layer\.0\.extra\.weight"),
    ("misshaped_tensor", r"mis-shaped tensors: embeddings\.position_embeddings \(checkpoint \(1, 10, 32\), config expects \(1, 17, 32\)\)"),
    ("label_count", r"id2label has 4 labels but the classifier .* has 3 outputs"),
    ("corrupt_safetensors", r"model\.safetensors: not a readable safetensors file"),
])
def test_bad_checkpoints_are_named(classifier_dir, tmp_path: Path, case: str, pattern: str) -> None:
    d, _ = classifier_dir
    source = str(d)
    if case == "missing_dir":
        source = str(tmp_path / "nope")
    elif case == "file_not_dir":
        source = str(d / "config.json")
    elif case == "no_weights":
        (d / "model.safetensors").unlink()
    elif case == "wrong_model_type":
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(dict(cfg, model_type="bert")))
    elif case == "bad_json":
        (d / "config.json").write_text("{not json")
    elif case == "missing_tensor":
        _mutate_weights(d, lambda s: {k: v for k, v in s.items() if k != "encoder.layer.1.output.dense.weight"})
    elif case == "unexpected_tensor":
        _mutate_weights(d, lambda s: dict(s, **{"encoder.layer.0.extra.weight": torch.zeros(2)}))
    elif case == "misshaped_tensor":
        _mutate_weights(d, lambda s: dict(s, **{"vit.embeddings.position_embeddings": torch.zeros(1, 10, 32)}))
    elif case == "label_count":
        cfg = json.loads((d / "config.json").read_text())
        cfg["id2label"] = {str(i): f"c{i}" for i in range(4)}
        (d / "config.json").write_text(json.dumps(cfg))
    elif case == "corrupt_safetensors":
        (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match=pattern) as info:
        load_checkpoint(source)
    if case not in ("missing_dir",):
        assert str(d) in str(info.value) or source in str(info.value)


def test_demo_resolves(tmp_path: Path) -> None:
    from vitmsn.export.demo import CHECKPOINT_DIR

    ck = load_checkpoint("demo")
    assert ck.directory == CHECKPOINT_DIR and ck.task == "image-classification"
    assert ck.preprocess_source == "preprocessor_config.json"
    assert ck.arch.image_size == 224 and ck.arch.patch_size == 16
