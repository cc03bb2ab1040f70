"""The model host inside an environment that inherits nothing: a script, not a module of
sigserve (that venv has the version's own MLflow and pandas, not sigserve's).

Run as ``<venv>/bin/python -I environment_child.py <path of environment_codec.py>`` by
``serving.environment_isolated``. It reads one JSON request per line on stdin and writes one
JSON answer per line on stdout (bytes as ``{"__b64__": ...}``): ``load`` (a checked artifact's
directory, under a key), ``predict`` (an encoded input, ``serving.environment_codec``),
``stream``, ``next`` and ``close`` (a ``predict_stream`` pulled one chunk per request) and
``unload``. A failure is answered as its type name and message, never a traceback. What the
model prints goes to stderr, so it cannot break the protocol.
"""

import base64
import importlib.util
import json
import os
import sys
from typing import Any


def _bytes(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__b64__": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _unbytes(record: dict[str, Any]) -> Any:
    if len(record) == 1 and "__b64__" in record:
        return base64.b64decode(record["__b64__"])
    return record


def _error(exc: Exception) -> dict[str, Any]:
    message = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = exc.args[0]
    record: dict[str, Any] = {"kind": "raised", "type": type(exc).__name__}
    record["message"] = message[:2000]
    code = getattr(exc, "error_code", None)
    if isinstance(code, str):
        record["error_code"] = code
    return {"error": record}


def main() -> None:
    spec = importlib.util.spec_from_file_location("sigserve_environment_codec", sys.argv[1])
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot read the codec at {sys.argv[1]}")
    codec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codec)
    # Answers go on a copy of fd 1 that only this loop writes; fd 1 itself (what C code, a
    # subprocess or os.system writes to) goes to stderr, so nothing a model prints can take an
    # answer's place in the pipe and shift every later answer to the wrong request.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    models: dict[str, Any] = {}
    # Stream id -> a model's predict_stream being pulled (one request per chunk).
    streams: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line, object_hook=_unbytes)
        try:
            op = request["op"]
            if op == "load":
                import mlflow.pyfunc

                models[request["key"]] = mlflow.pyfunc.load_model(request["path"])
                answer: dict[str, Any] = {"ok": True}
            elif op == "predict":
                model = models[request["key"]]
                data = codec.decode(request["data"])
                result = model.predict(data, params=request.get("params") or None)
                answer = {"answer": codec.encode(result)}
            elif op == "stream":
                model = models[request["key"]]
                data = codec.decode(request["data"])
                stream = str(request.get("id"))  # unique: the parent numbers its requests
                streams[stream] = iter(
                    model.predict_stream(data, params=request.get("params") or None)
                )
                answer = {"stream": stream}
            elif op == "next":
                try:
                    answer = {"chunk": codec.encode(next(streams[request["stream"]]))}
                except StopIteration:
                    streams.pop(request["stream"], None)
                    answer = {"done": True}
                except Exception:
                    streams.pop(request["stream"], None)  # an error ends the stream
                    raise
            elif op == "close":
                chunks = streams.pop(request["stream"], None)
                if chunks is not None and hasattr(chunks, "close"):
                    chunks.close()
                answer = {"ok": True}
            elif op == "unload":
                models.pop(request["key"], None)
                answer = {"ok": True}
            else:
                answer = {"ok": True, "python": sys.version}
        except Exception as exc:
            answer = _error(exc)
        # The request's id, echoed: the parent checks each answer is its request's.
        answer["id"] = request.get("id")
        answers.write(json.dumps(answer, default=_bytes) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
