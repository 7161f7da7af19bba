"""The fitted classifier as a Hugging Face checkpoint: the backbone's weights and config, the folded head as
``classifier``, the backbone's preprocessing. transformers' ``ViTMSNForImageClassification`` and
``pipeline("image-classification")`` load it as they load any classifier; the export then reads it as its model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vitmsn.core.errors import InputError
from vitmsn.export.fp32.checkpoint import Checkpoint
from vitmsn.fewshot import FewshotHead
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG

CHECKPOINT_DIR = "checkpoint"  # inside the artifacts directory
FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def backbone_state(ck: Checkpoint, replace_head: bool, option: str = "--model") -> dict[str, torch.Tensor]:
    """The backbone's tensors under transformers 4.x names without the ``vit.`` prefix; a checkpoint with a
    classifier head is refused unless ``replace_head``."""
    if ck.task == "image-classification":
        if not replace_head:
            raise InputError(f"{option} {ck.source}: already has a classifier head ({ck.num_labels} labels); pass "
                             "--replace-head to fit a new one in its place, or give the backbone checkpoint")
        return {k.removeprefix("vit."): v for k, v in ck.state_dict.items() if not k.startswith("classifier.")}
    return dict(ck.state_dict)


def backbone_from_state(ck: Checkpoint, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The FP32 PyTorch backbone (``(hidden, cls_embedding) = backbone(pixels)``), in eval mode."""
    from vitmsn.export.fp32.model import ViTMSNBackbone

    model = ViTMSNBackbone(ck.arch)
    model.load_state_dict(state, strict=True)
    return model.eval()


def write_checkpoint(ck: Checkpoint, state: dict[str, torch.Tensor], head: FewshotHead, out: Path) -> Path:
    """Write ``out`` (config.json with id2label, model.safetensors, preprocessor_config.json); return it."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"vit.{k}": v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    tensors["classifier.weight"] = torch.from_numpy(head.weight.astype("float32")).contiguous()
    tensors["classifier.bias"] = torch.from_numpy(head.bias.astype("float32")).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {k: v for k, v in ck.config.items() if k not in ("id2label", "label2id", "num_labels")}
    config.update(architectures=["ViTMSNForImageClassification"],
                  id2label={str(i): name for i, name in sorted(head.id2label.items())},
                  label2id={name: i for i, name in sorted(head.id2label.items())})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    source = ck.directory / "preprocessor_config.json"
    if source.is_file():
        (out / "preprocessor_config.json").write_bytes(source.read_bytes())
    else:  # the defaults the backbone's export would use, written out so every reader agrees
        defaults = dict(DEFAULT_PREPROCESSOR_CONFIG, size={"height": ck.arch.image_size, "width": ck.arch.image_size})
        (out / "preprocessor_config.json").write_text(json.dumps(defaults, indent=2) + "\n")
    return out
