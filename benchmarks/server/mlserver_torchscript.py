"""A minimal MLServer runtime serving a TorchScript file, so MLServer and kubemaas serve the
identical model in `benchmarks/bench_server.py`.

It follows the shape of MLServer's own runtimes (mlserver-sklearn, mlserver-xgboost): decode the
request with the codecs, run the model inside `predict`, encode the response. One difference is
in MLServer's favour: the forward pass runs in a worker thread (torch releases the GIL), so
MLServer's event loop keeps receiving requests while a batch computes, as kubemaas's does.
Adaptive batching (max_batch_size / max_batch_time in model-settings.json) is MLServer's own.
Runs inside the MLServer venv, not ours, so it imports nothing from kubemaas.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TorchScriptModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        torch.set_num_threads(1)
        uri = self.settings.parameters.uri
        self._module = torch.jit.load(uri, map_location="cpu").eval()
        with torch.inference_mode():
            self._module(torch.zeros(1, 256))
        return True

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._module(torch.from_numpy(batch)).numpy()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = np.ascontiguousarray(NumpyCodec.decode_input(payload.inputs[0]), dtype=np.float32)
        output = await asyncio.to_thread(self._forward, batch)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name="output", payload=output)],
        )
