"""Stage 3: ONNX graphs -> serialized TensorRT / TensorRT-RTX engines."""
