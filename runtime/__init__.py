"""The slim runtime: preprocessing and inference on ONNX Runtime or TensorRT. Never imports torch."""
