"""Triton Python-backend model: encoded images (TYPE_STRING) -> the model's ``pixel_values``.

``vitmsn triton`` copies this file to ``<name>_preprocess/1/model.py`` beside ``preprocess.json``
(the artifacts manifest's ``preprocess`` block). It runs vitmsn's own preprocessing
(:class:`vitmsn.runtime.images.preprocess.PreprocessConfig`: EXIF orientation, RGB conversion, resize,
rescale, normalize), the one definition used by calibration, validation and ``vitmsn serve``,
so the Python backend's environment needs ``pip install vitmsn`` (numpy and Pillow only).

A request whose image cannot be decoded gets an error response naming the reason; the other
requests of the same batch are answered normally.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Triton's Python backend provides this module inside the server; imported in initialize() so
# that this file can also be imported (and tested) outside Triton.
pb_utils: Any = None


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        global pb_utils
        import triton_python_backend_utils as _pb_utils

        from vitmsn.runtime.images.preprocess import PreprocessConfig

        pb_utils = _pb_utils
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "preprocess.json"), encoding="utf-8") as f:
            self.preprocess = PreprocessConfig.from_manifest(json.load(f))
        self.input_name = config["input"][0]["name"]
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests: list[Any]) -> list[Any]:
        from vitmsn.core.errors import InputError

        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                images = [bytes(item) for item in encoded.reshape(-1)]
                pixels = self.preprocess.batch(images).astype(self.output_dtype, copy=False)
            except InputError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pixels)]))
        return responses

    def finalize(self) -> None:
        self.preprocess = None

