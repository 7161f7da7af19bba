"""The vit-msn-small shape (ViT-S/16, 1000 classes) with seeded random weights: the checkpoint several benchmarks
export (no hub access on these machines). ``jitter`` gives every bias and LayerNorm parameter distinct values, as a
trained model has (zero biases would be deduplicated by the exporter; run_cpu's tables were measured with it)."""

from __future__ import annotations

from pathlib import Path

VIT_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, layer_norm_eps=1e-6)


def vits_checkpoint(path: Path, jitter: bool = False) -> Path:
    """Write the checkpoint to ``path`` (kept when it is there) and return ``path``."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import ViTMSNConfig, ViTMSNForImageClassification

    torch.manual_seed(0)
    model = ViTMSNForImageClassification(ViTMSNConfig(**VIT_S, num_labels=1000)).eval()
    if jitter:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "layernorm" in name:
                    p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(path)
    return path
