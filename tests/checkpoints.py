"""Test helpers that write real Hugging Face checkpoints with transformers (a test-only dependency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# Non-default shapes: odd patch and image size, 3 heads, no qkv bias, another eps, 5 labels, tanh GELU.
ODD_CONFIG: dict[str, Any] = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80,
                                  image_size=35, patch_size=7, qkv_bias=False, layer_norm_eps=1e-5,
                                  hidden_act="gelu_new", num_labels=5)
TINY_CONFIG: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   image_size=32, patch_size=8, num_labels=3)


def save_transformers(out: Path, classifier: bool = True, seed: int = 0, preprocessor: dict | None = None,
                      **config: Any) -> torch.nn.Module:
    """Save a randomly initialised transformers ViTMSN with ``save_pretrained``; return the model."""
    from transformers import ViTMSNConfig, ViTMSNForImageClassification, ViTMSNModel

    torch.manual_seed(seed)
    cfg = ViTMSNConfig(**(config or TINY_CONFIG))
    if cfg.num_labels:
        cfg.id2label = {i: f"class_{i}" for i in range(cfg.num_labels)}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    model = (ViTMSNForImageClassification(cfg) if classifier else ViTMSNModel(cfg)).eval()
    # Non-zero biases and LayerNorm affine parameters, so a mis-mapped tensor cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    if preprocessor is not None:
        (out / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def transformers_outputs(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values=pixel_values)
        if hasattr(out, "logits"):
            hidden = model.vit(pixel_values=pixel_values).last_hidden_state
            return {"logits": out.logits, "embedding": hidden[:, 0]}
    return {"last_hidden_state": out.last_hidden_state, "embedding": out.last_hidden_state[:, 0]}
