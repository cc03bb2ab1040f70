"""Run by KServe's Python SDK in a venv of its own (``tests/zoo/foreign_env.py``; kserve pins
pandas 2 and protobuf 6, which the lock does not have), never by sigserve's interpreter: calls a
server's Open Inference Protocol with ``InferenceRESTClient`` as a KServe user does and writes
what it got to a JSON file.

Usage: python -I kserve_v2.py BASE_URL COLUMNS_MODEL TENSOR_MODEL OUTPUT_JSON
"""

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

PROMPTS = ["a", "bb", "ccc"]
XS = [1.5, -2.0, 0.25]
ROWS = [[1.0, 2.0, 3.0], [4.0, -5.0, 6.5]]


def plain(value):
    return value.decode() if isinstance(value, bytes) else value


def column_request(name, binary):
    prompt = InferInput("prompt", [len(PROMPTS)], "BYTES")
    prompt.set_data_from_numpy(np.array(PROMPTS, dtype=object), binary_data=binary)
    x = InferInput("x", [len(XS)], "FP64")
    x.set_data_from_numpy(np.array(XS, dtype=np.float64), binary_data=binary)
    return InferRequest(name, [prompt, x], request_id="k-1", parameters={"scale": 3.0})


async def main(base, columns, tensor):
    found = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        found["live"] = await client.is_server_live(base)
        found["ready"] = await client.is_server_ready(base)
        found["model_ready"] = await client.is_model_ready(base, columns)
        for binary in (True, False):
            answer = await client.infer(base, column_request(columns, binary), model_name=columns)
            found[f"columns_binary_{binary}"] = {
                "id": answer.id,
                "outputs": {o.name: [plain(v) for v in o.as_numpy().tolist()]
                            for o in answer.outputs},
            }
            rows = InferInput("input-0", [2, 3], "FP32")
            rows.set_data_from_numpy(np.array(ROWS, dtype=np.float32), binary_data=binary)
            answer = await client.infer(base, InferRequest(tensor, [rows]), model_name=tensor)
            (output,) = answer.outputs
            found[f"tensor_binary_{binary}"] = {"dtype": str(output.as_numpy().dtype),
                                                "rows": output.as_numpy().tolist()}
        try:  # the quarantined version, chosen as for /serve, by the multiplexed model id
            await client.infer(base, column_request(columns, False), model_name=columns,
                               headers={"serve_multiplexed_model_id": f"{columns}/2"})
        except httpx.HTTPStatusError as exc:
            found["quarantined"] = {"status": exc.response.status_code, "message": str(exc)}
    return found


if __name__ == "__main__":
    base, columns, tensor, output = sys.argv[1:5]
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(asyncio.run(main(base, columns, tensor)), handle)
