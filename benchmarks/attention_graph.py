"""Which attention path exports the cleaner ONNX graph? Prints op counts for both on ViT-S.

    python benchmarks/attention_graph.py [--opset 18]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import torch

from vitmsn.export.fp32.model import ViTMSNArch, ViTMSNClassifier
from vitmsn.export.fp32.onnx_export import onnx_from_model
from vitmsn.export.fp32.spec import BatchRange, ExportSpec

VIT_S = ViTMSNArch(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, layer_norm_eps=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args()
    spec = ExportSpec(VIT_S, "image-classification", 1000)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for attention in ("math", "sdpa"):
            torch.manual_seed(0)
            proto = onnx_from_model(ViTMSNClassifier(VIT_S, 1000, attention), spec, Path(tmp) / f"{attention}.onnx",
                                    opset=args.opset, batch=BatchRange())
            counts[attention] = collections.Counter(n.op_type for n in proto.graph.node)
    ops = sorted(set(counts["math"]) | set(counts["sdpa"]))
    print(f"| op | math | sdpa |\n|---|---:|---:|")
    for op in ops:
        print(f"| {op} | {counts['math'][op]} | {counts['sdpa'][op]} |")
    print(f"| total | {sum(counts['math'].values())} | {sum(counts['sdpa'].values())} |")


if __name__ == "__main__":
    main()
