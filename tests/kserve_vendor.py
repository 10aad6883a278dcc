"""A shipped vendor classifier served by KServe's real ModelServer (REST v1 and v2), for the conformance tests.

It runs in the KServe venv that scripts/setup_tests.sh builds (.venv-kserve: kserve's pins stay out of
the gateway's venv); tests/test_kserve_upstream.py starts it as a process:

    .venv-kserve/bin/python tests/kserve_vendor.py --model-dir models/vendor-clean --name fmnist --port 8085

The model is `VendorPredictor` (service/demo/predictor.py), the same predictor the demo vendor
serves, wrapped as a `kserve.Model`: v1 takes `{"instances": [{"b64": ...}]}` and answers
`{"predictions": [{"label", "class_name", "probabilities"}]}`; v2 takes one BYTES input "image" of
base64 images (JSON, or the binary extension) and answers "probabilities" (FP32 [N, 10]) and
"label" (INT64 [N]), binary when the request asks (`binary_data_output`).
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse

from service.demo.decoding import InputLimits
from service.demo.predictor import EncodedImage, ImagePrediction, VendorPredictor

IMAGE_INPUT = "image"


class VendorModel(kserve.Model):
    """`VendorPredictor` as a KServe model: load once, then decode → predict → encode per request."""

    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self._model_dir = model_dir
        self._predictor: VendorPredictor | None = None

    def load(self) -> bool:
        self._predictor = VendorPredictor(self._model_dir, self.name, InputLimits())
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        classes = len(self._predictor.class_names) if self._predictor else 10
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ]

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        assert self._predictor is not None
        if isinstance(payload, InferRequest):  # v2
            tensor = payload.get_input_by_name(IMAGE_INPUT) or payload.inputs[0]
            texts = tensor.as_numpy().ravel().tolist()
            predictions = self._predictor.predict(
                [EncodedImage(f"inputs[0].data[{i}]", base64.b64decode(text)) for i, text in enumerate(texts)]
            )
            return _v2_response(payload, self.name, predictions)
        instances = payload["instances"]  # v1
        predictions = self._predictor.predict(
            [EncodedImage(f"instances[{i}].b64", base64.b64decode(item["b64"])) for i, item in enumerate(instances)]
        )
        return {
            "predictions": [
                {"label": p.label, "class_name": p.class_name, "probabilities": list(p.probabilities)}
                for p in predictions
            ]
        }


def _v2_response(request: InferRequest, name: str, predictions: list[ImagePrediction]) -> InferResponse:
    probabilities = np.array([p.probabilities for p in predictions], dtype=np.float32)
    labels = np.array([p.label for p in predictions], dtype=np.int64)
    outputs = [
        InferOutput("probabilities", list(probabilities.shape), "FP32"),
        InferOutput("label", [len(labels)], "INT64"),
    ]
    outputs[0].set_data_from_numpy(probabilities, binary_data=False)
    outputs[1].set_data_from_numpy(labels, binary_data=False)
    return InferResponse(
        response_id=request.id or "",
        model_name=name,
        infer_outputs=outputs,
        use_binary_outputs=request.use_binary_outputs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a shipped vendor, e.g. models/vendor-clean")
    parser.add_argument("--name", default="fmnist", help="the model name in /v1/models/{name} and /v2/models/{name}")
    parser.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    args = parser.parse_args()
    model = VendorModel(args.name, args.model_dir)
    model.load()
    kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
