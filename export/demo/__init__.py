"""The demo: a small ViTMSN trained on procedural shapes, shipped as ``--model demo``.

``CHECKPOINT_DIR`` holds the Hugging Face-format checkpoint (config.json, model.safetensors,
preprocessor_config.json, training_report.json) written by ``python -m vitmsn.export.demo.train``.
The renderer (:mod:`.shapes`, numpy + Pillow only) writes labelled image folders for tests,
calibration and validation. Importing this package does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from .shapes import DEFAULT_HELDOUT_SEED, LABELS, image_rng, jpeg_roundtrip, render, write_dataset

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"

__all__ = ["CHECKPOINT_DIR", "DEFAULT_HELDOUT_SEED", "LABELS", "image_rng", "jpeg_roundtrip", "render", "write_dataset"]
