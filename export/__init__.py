"""The export side: PyTorch ViTMSN -> ONNX (FP32, FP16, INT8) -> TensorRT engines, with validation."""
