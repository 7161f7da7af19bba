"""Our own PyTorch ViTMSN: the backbone (feature extraction) and the image classifier.

The module tree mirrors the published transformers 4.x checkpoints closely enough that a
checkpoint's tensors map onto it one to one (see ``vitmsn.export.fp32.checkpoint`` for the key
mapping of both the 4.x and 5.x naming schemes).

Attention has two implementations, picked when the model is built (never patched during
export):

* ``"math"``: explicit ``softmax(Q @ K^T * scale) @ V``. This is the export default. The dynamo
  exporter turns it into a plain MatMul -> Mul -> Softmax -> MatMul chain per layer, the pattern
  TensorRT's fused-attention (MHA) matcher, ModelOpt's Q/DQ placement and ONNX Runtime's
  transformer optimizer recognise. Measured on ViT-S (12 layers) at opset 18 with torch 2.13
  (``python benchmarks/attention_graph.py``): ``math`` exports 1 Shape, 0 Slice, 2 Concat nodes;
  ``sdpa`` exports 13 Shape, 36 Slice, 26 Concat nodes, because its decomposition recomputes the
  head shape per layer and scales Q and K separately by sqrt(scale) (older exporters also wrapped
  Softmax in IsNaN/Where guards for fully masked rows, which a ViT never has). Those extra
  nodes break the MatMul -> Softmax -> MatMul adjacency the matchers look for.
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``, the faster path for PyTorch
  inference itself (benchmarks' ``pytorch-sdpa`` row).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Attention = Literal["math", "sdpa"]
EXPORT_ATTENTION: Attention = "math"

# hidden_act names that transformers' ACT2FN accepts for ViT-family models, mapped to torch.
_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_python": lambda: nn.GELU(),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
    "swish": lambda: nn.SiLU(),
    "quick_gelu": lambda: _QuickGELU(),
}


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# The largest value config.json may give each size (sanity limits, see ViTMSNArch.__post_init__).
_SIZE_LIMITS = {"hidden_size": 16384, "num_hidden_layers": 1024, "num_attention_heads": 1024,
                "intermediate_size": 131072, "image_size": 8192, "patch_size": 8192, "num_channels": 64}


@dataclass(frozen=True)
class ViTMSNArch:
    """The ViTMSNConfig fields that shape the network (everything else in config.json is ignored)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        """Types and ranges first, then the divisibility rules (never a division by zero).

        The upper bounds are sanity limits (ViT-H/14 has hidden 1280, 32 layers, 16 heads), far
        above any real ViT; they keep a corrupt config.json from sizing anything before its
        weights have been checked."""
        problems = []
        for name, most in _SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name} must be an integer, got {value!r}")
            elif value <= 0:
                problems.append(f"{name} must be positive, got {value}")
            elif value > most:
                problems.append(f"{name} {value} is over {most}, far beyond any ViT; the file is corrupt or not a ViTMSN config")
        if problems:
            raise ValueError("; ".join(problems))
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_act not in _ACTIVATIONS:
            problems.append(f"hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 < eps < 1:
            problems.append(f"layer_norm_eps must be a number between 0 and 1, got {eps!r}")
        if not isinstance(self.qkv_bias, bool):
            problems.append(f"qkv_bias must be true or false, got {self.qkv_bias!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ViTMSNArch":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known}
        for key in ("image_size", "patch_size"):
            size = values.get(key)
            if isinstance(size, (list, tuple)):
                if not size or any(v != size[0] for v in size):
                    raise ValueError(f"non-square {key} {size} is not supported")
                values[key] = size[0]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def parameter_shapes(self, num_labels: int = 0) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, by canonical name (no ``vit.`` prefix), computed without
        building the model: what a checkpoint's weights are checked against before anything is
        allocated. ``num_labels`` > 0 adds the classifier."""
        d, m, c, p = self.hidden_size, self.intermediate_size, self.num_channels, self.patch_size
        shapes: dict[str, tuple[int, ...]] = {
            "embeddings.cls_token": (1, 1, d),
            "embeddings.position_embeddings": (1, self.num_patches + 1, d),
            "embeddings.patch_embeddings.projection.weight": (d, c, p, p),
            "embeddings.patch_embeddings.projection.bias": (d,),
        }
        for i in range(self.num_hidden_layers):
            layer = f"encoder.layer.{i}."
            for name in ("query", "key", "value"):
                shapes[f"{layer}attention.attention.{name}.weight"] = (d, d)
                if self.qkv_bias:
                    shapes[f"{layer}attention.attention.{name}.bias"] = (d,)
            shapes.update({f"{layer}attention.output.dense.weight": (d, d), f"{layer}attention.output.dense.bias": (d,),
                           f"{layer}intermediate.dense.weight": (m, d), f"{layer}intermediate.dense.bias": (m,),
                           f"{layer}output.dense.weight": (d, m), f"{layer}output.dense.bias": (d,)})
            for norm in ("layernorm_before", "layernorm_after"):
                shapes.update({f"{layer}{norm}.weight": (d,), f"{layer}{norm}.bias": (d,)})
        shapes.update({"layernorm.weight": (d,), "layernorm.bias": (d,)})
        if num_labels > 0:
            shapes.update({"classifier.weight": (num_labels, d), "classifier.bias": (num_labels,)})
        return shapes

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def gflops_per_image(self, include_attention: bool = False) -> float:
        """GFLOP (2 x multiply-accumulates) of one forward pass.

        By default the dense layers only (patch projection, Q/K/V/output projections, MLP), the
        convention behind the 8.48 GFLOP usually quoted for ViT-S/16 at 224; the two
        attention matmuls (Q @ K^T and P @ V, 0.72 GFLOP for ViT-S) are added on request.
        """
        t = self.num_patches + 1
        d, m = self.hidden_size, self.intermediate_size
        dense = self.num_hidden_layers * 2 * t * (4 * d * d + 2 * d * m)
        dense += 2 * self.num_patches * d * self.num_channels * self.patch_size**2
        attention = self.num_hidden_layers * 2 * 2 * t * t * d if include_attention else 0
        return (dense + attention) / 1e9


class PatchEmbeddings(nn.Module):
    def __init__(self, arch: ViTMSNArch) -> None:
        super().__init__()
        self.projection = nn.Conv2d(arch.num_channels, arch.hidden_size, arch.patch_size, arch.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, arch: ViTMSNArch) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, arch.num_patches + 1, arch.hidden_size))
        self.patch_embeddings = PatchEmbeddings(arch)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embeddings(pixel_values)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat((cls, patches), dim=1) + self.position_embeddings


class SelfAttention(nn.Module):
    def __init__(self, arch: ViTMSNArch, attention: Attention) -> None:
        super().__init__()
        if attention not in ("math", "sdpa"):
            raise ValueError(f"attention must be 'math' or 'sdpa', got {attention!r}")
        self.attention = attention
        self.heads = arch.num_attention_heads
        self.head_dim = arch.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(arch.hidden_size, arch.hidden_size, bias=arch.qkv_bias)
        self.key = nn.Linear(arch.hidden_size, arch.hidden_size, bias=arch.qkv_bias)
        self.value = nn.Linear(arch.hidden_size, arch.hidden_size, bias=arch.qkv_bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if self.attention == "sdpa":
            context = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
            context = torch.matmul(probs, v)
        b, _, t, _ = context.shape
        return context.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)


class AttentionOutput(nn.Module):
    def __init__(self, arch: ViTMSNArch) -> None:
        super().__init__()
        self.dense = nn.Linear(arch.hidden_size, arch.hidden_size)


class AttentionBlock(nn.Module):
    def __init__(self, arch: ViTMSNArch, attention: Attention) -> None:
        super().__init__()
        self.attention = SelfAttention(arch, attention)
        self.output = AttentionOutput(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class Intermediate(nn.Module):
    def __init__(self, arch: ViTMSNArch) -> None:
        super().__init__()
        self.dense = nn.Linear(arch.hidden_size, arch.intermediate_size)
        self.act = _ACTIVATIONS[arch.hidden_act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Output(nn.Module):
    def __init__(self, arch: ViTMSNArch) -> None:
        super().__init__()
        self.dense = nn.Linear(arch.intermediate_size, arch.hidden_size)


class Layer(nn.Module):
    def __init__(self, arch: ViTMSNArch, attention: Attention) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)
        self.attention = AttentionBlock(arch, attention)
        self.layernorm_after = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)
        self.intermediate = Intermediate(arch)
        self.output = Output(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(self.intermediate(self.layernorm_after(x)))


class Encoder(nn.Module):
    def __init__(self, arch: ViTMSNArch, attention: Attention) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(arch, attention) for _ in range(arch.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class ViTMSNBackbone(nn.Module):
    """Feature extraction: ``(last_hidden_state [N,T,D], embedding [N,D])``.

    ``embedding`` is the CLS token after the final LayerNorm, the representation MSN trains.
    """

    def __init__(self, arch: ViTMSNArch, attention: Attention = EXPORT_ATTENTION) -> None:
        super().__init__()
        self.arch = arch
        self.embeddings = Embeddings(arch)
        self.encoder = Encoder(arch, attention)
        self.layernorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.layernorm(self.encoder(self.embeddings(pixel_values)))
        return hidden, hidden[:, 0]


class ViTMSNClassifier(nn.Module):
    """Image classification: ``(logits [N,L], embedding [N,D])``, logits from the CLS token."""

    def __init__(self, arch: ViTMSNArch, num_labels: int, attention: Attention = EXPORT_ATTENTION) -> None:
        super().__init__()
        if num_labels <= 0:
            raise ValueError(f"num_labels must be positive, got {num_labels}")
        self.arch = arch
        self.vit = ViTMSNBackbone(arch, attention)
        self.classifier = nn.Linear(arch.hidden_size, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, embedding = self.vit(pixel_values)
        return self.classifier(embedding), embedding
