"""vitmsn: take a PyTorch ViTMSN image model to production (ONNX, FP16/INT8, TensorRT, runtime).

Subpackages: ``vitmsn.export`` (PyTorch side: checkpoint -> ONNX -> FP16/INT8 -> engines),
``vitmsn.calibration`` (calibration data), ``vitmsn.runtime`` (preprocessing + inference, no torch).
This module imports nothing heavy.
"""

__version__ = "0.1.0"
