"""Stage 1: a checkpoint -> the FP32 reference ONNX graph (model, checkpoint loading, export, staged checks, the I/O spec)."""
