"""Shared, session-scoped fixtures: real checkpoints, real exports, real image files.

Every fixture builds real artifacts once per test session (the export pipeline is the code
under test elsewhere; here it only provides inputs):

* ``demo_artifacts``: ``vitmsn-export --model demo`` (the trained demo checkpoint), FP32.
* ``vits_checkpoint`` / ``vits_artifacts``: a randomly initialised ViT-S-shaped classifier
  (hidden 384, 12 layers, 6 heads, 1000 labels) saved by transformers, and its FP32 export.
* ``heldout_images``: the demo's held-out images as real JPEG/PNG files in class folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HELDOUT_PER_CLASS = 25


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("artifacts") / "demo"
    run_export(ExportOptions(model="demo", out=out, engine="skip"))
    return out


@pytest.fixture(scope="session")
def heldout_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.demo import write_dataset

    out = tmp_path_factory.mktemp("heldout")
    write_dataset(out, per_class=HELDOUT_PER_CLASS, split="heldout")
    return out


@pytest.fixture(scope="session")
def vits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import ViTMSNConfig, ViTMSNForImageClassification

    torch.manual_seed(0)
    config = ViTMSNConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                          layer_norm_eps=1e-6, num_labels=1000)
    out = tmp_path_factory.mktemp("vits") / "checkpoint"
    ViTMSNForImageClassification(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vits_artifacts(vits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("artifacts") / "vits"
    run_export(ExportOptions(model=str(vits_checkpoint), out=out, engine="skip"))
    return out
