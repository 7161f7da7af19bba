"""Inference backends: the Runner protocol and one module per backend (ONNX Runtime, OpenVINO, TensorRT)."""
