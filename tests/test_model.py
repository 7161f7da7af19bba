"""Our PyTorch ViTMSN against transformers' on the same weights (both attention paths)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitmsn.export.fp32.checkpoint import load_checkpoint
from vitmsn.export.fp32.model import ViTMSNArch

from checkpoints import ODD_CONFIG, TINY_CONFIG, save_transformers, transformers_outputs

ATOL = 1e-5  # issue: max abs error 1e-5 in fp32


@pytest.mark.parametrize("config", [TINY_CONFIG, ODD_CONFIG], ids=["tiny", "odd-shapes"])
@pytest.mark.parametrize("classifier", [True, False], ids=["classifier", "backbone"])
@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_matches_transformers(tmp_path: Path, config: dict, classifier: bool, attention: str) -> None:
    reference = save_transformers(tmp_path, classifier=classifier, **config)
    ck = load_checkpoint(str(tmp_path))
    assert ck.task == ("image-classification" if classifier else "feature-extraction")
    ours = ck.build_model(attention)
    x = torch.randn(3, 3, config["image_size"], config["image_size"])
    expected = transformers_outputs(reference, x)
    with torch.no_grad():
        got = dict(zip(expected, ours(x)))
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        err = (got[name] - value).abs().max().item()
        assert err <= ATOL, f"{name}: max abs error {err:.2e} > {ATOL}"


def test_attention_paths_agree() -> None:
    arch = ViTMSNArch(**{k: v for k, v in ODD_CONFIG.items() if k != "num_labels"})
    from vitmsn.export.fp32.model import ViTMSNClassifier

    torch.manual_seed(1)
    math_model = ViTMSNClassifier(arch, 5, "math").eval()
    sdpa_model = ViTMSNClassifier(arch, 5, "sdpa").eval()
    sdpa_model.load_state_dict(math_model.state_dict())
    x = torch.randn(4, 3, arch.image_size, arch.image_size)
    with torch.no_grad():
        a, b = math_model(x), sdpa_model(x)
    for ta, tb in zip(a, b):
        assert (ta - tb).abs().max().item() <= ATOL


@pytest.mark.parametrize("bad, message", [
    (dict(hidden_size=30, num_attention_heads=4), "not a multiple of num_attention_heads"),
    (dict(image_size=30, patch_size=7), "not a multiple of patch_size"),
    (dict(hidden_act="mish"), "hidden_act"),
])
def test_arch_rejects_inconsistent_config(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViTMSNArch(**bad)


def test_vit_s_flops_match_environment_figure() -> None:
    # ViT-S/16 at 224 costs 8.48 GFLOP per image (2 x MACs of the dense layers).
    arch = ViTMSNArch(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
    assert arch.gflops_per_image() == pytest.approx(8.48, rel=0.02)


def test_attention_flops_are_counted_on_request() -> None:
    arch = ViTMSNArch(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
    t, d = arch.num_patches + 1, arch.hidden_size
    extra = arch.gflops_per_image(include_attention=True) - arch.gflops_per_image()
    assert extra == pytest.approx(12 * 4 * t * t * d / 1e9)
