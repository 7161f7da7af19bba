"""FP32 parity tolerances, in one place for every check that compares FP32 with FP32 (no imports, so the
bench and the runtime side can read them without torch).

ONNX Runtime FP32 against PyTorch FP32: an element passes when |onnx - torch| <= ATOL + RTOL * |torch|,
the numpy.allclose rule (issue: atol 1e-4, rtol 1e-3).
"""

ATOL_FP32 = 1e-4
RTOL_FP32 = 1e-3
