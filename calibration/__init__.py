"""Calibration data: images -> a deterministic, stratified, preprocessed and cached sample.

    from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
    cs = calibration_set_from_directory("images/", manifest.preprocess.to_json(), CalibrationOptions(samples=64))
    for feed in cs.reader(batch_size=8): ...          # {"pixel_values": float32 [n, 3, H, W]}

numpy + Pillow only (through the runtime's preprocessing); no torch, no onnx.
"""

from __future__ import annotations

from enum import Enum

from .cache import tensor_sha256, tensor_stats
from .dataset import (DEFAULT_MIN_IMAGES, DEFAULT_SAMPLES, CalibrationOptions, CalibrationSet,
                      calibration_set_from_directory, default_cache_dir)
from .images import IMAGE_EXTENSIONS, discover_images, heldout_split, sample_order, strata_of
from .reader import CalibrationReader, as_ort_reader, even_batch_size


class CalibrationMethod(str, Enum):
    """How activation ranges are chosen from the calibration data (ModelOpt's INT8 PTQ offers these two)."""

    ENTROPY = "entropy"  # KL-divergence-minimising threshold (TensorRT's classic EntropyCalibrator2)
    MAX = "max"  # absolute maximum seen


__all__ = [
    "DEFAULT_MIN_IMAGES", "DEFAULT_SAMPLES", "IMAGE_EXTENSIONS", "CalibrationMethod", "CalibrationOptions",
    "CalibrationReader", "CalibrationSet", "as_ort_reader", "calibration_set_from_directory", "default_cache_dir",
    "discover_images", "even_batch_size", "heldout_split", "sample_order", "strata_of", "tensor_sha256",
    "tensor_stats",
]
