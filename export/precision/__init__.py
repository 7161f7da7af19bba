"""Stage 2: precision conversions of the FP32 graph (FP16, INT8 for TensorRT and for the CPU, ORT-fused FP32, re-quantization)."""
