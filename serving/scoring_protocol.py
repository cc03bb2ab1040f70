"""MLflow's scoring protocol, read and answered as ``mlflow models serve`` (MLflow 3.17) does.

What a client of ``mlflow models serve`` sends to ``/invocations`` works unchanged against
``/models/{name}/invocations`` (docs/architecture.md, "MLflow's scoring protocol"):

- ``application/json``: exactly one of ``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``, with optional ``params``; other top-level keys are ignored, as MLflow
  ignores them. Parsed with MLflow's own parser against the version's signature, except the
  records and split tables ``serving.mlflow_frames`` makes into the very frame that parser
  would (a fraction of its CPU), and the numeric tensors ``serving.tensor_inputs`` makes into
  the very array it would; those also come as ``records`` for a path that batches them.
  Answered ``{"predictions": ...}``.
- The unwrapped LLM input: a JSON object with ``messages``, ``prompt`` or ``input`` goes to the
  model as sent, less the keys the signature names as params (those become params), and its
  answer comes back without the ``predictions`` wrapper.
- ``text/csv`` and ``application/vnd.apache.parquet``: a table, read by MLflow's readers (CSV
  with the signature's column dtypes); no params.
- Anything else, a charset other than UTF-8 or another content-type parameter: 415.
- A version whose signature MLflow derived from ``predict``'s type hints (the routing table's
  signature says ``"is_signature_from_type_hint": "true"``, from the MLmodel) gets its
  ``inputs`` as sent, unparsed, as MLflow hands them to it; other formats are refused.

Errors stay sigserve's problem+json (``serving.problems`` adds MLflow's ``error_code``), and a
reason never repeats the request's data: MLflow's own messages do, so they are not passed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO, StringIO
from typing import Any, cast

import numpy as np
import pandas as pd
from fastapi.responses import Response
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc.scoring_server import (
    infer_and_parse_data,
    parse_csv_input,
    parse_parquet_input,
)
from mlflow.types.schema import DataType
from mlflow.version import VERSION

from serving import mlflow_frames, tensor_inputs
from serving.bodies import bad_body, check_count, check_rows, parse_json
from serving.exceptions import InvalidInput, UnsupportedMediaType
from serving.frames import jsonable
from serving.mlflow_frames import MlflowRecords
from serving.tensor_inputs import MlflowTensor

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
MEDIA_TYPES = (JSON, CSV, PARQUET)
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# MLflow 3's "unified LLM input" keys (mlflow.pyfunc.utils.serving_data_parser).
LLM_KEYS = ("messages", "prompt", "input")
# The MLmodel's flag, carried in the routing table's signature of a version.
TYPE_HINT_KEY = "is_signature_from_type_hint"


@dataclass(frozen=True)
class ScoringInput:
    """What the model is called with, and whether its answer goes back unwrapped."""

    parsed: Any
    params: dict[str, Any] | None
    unwrapped: bool
    # The body's records when the model's input is their ``mlflow_frames.frame``, or its tensor
    # as MLflow's parser makes it (``tensor_inputs``): what a path that batches them takes (the
    # frame is then made once per call, not per request; tensors are concatenated).
    records: MlflowRecords | MlflowTensor | None = None
    columns: Mapping[str, DataType] | None = None

    @property
    def data(self) -> Any:
        """The model's input, as MLflow's scoring server would call it with."""
        if self.records is not None and self.columns is not None:
            return mlflow_frames.frame(self.records, self.columns)
        return self.parsed


def parse(
    raw: bytes,
    content_type: str | None,
    signature: ModelSignature | None,
    max_records: int | None,
    *,
    typed: bool = False,
) -> ScoringInput:
    """The model's input for a request body under the running version's ``signature``;
    ``typed``: that signature comes from type hints (``typed_inputs``)."""
    media = media_type(content_type)
    schema: Any = signature.inputs if signature is not None else None
    if media == CSV:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_body("is not UTF-8 text") from None
        frame = _table(parse_csv_input, StringIO(text), schema=schema, kind="CSV")
    elif media == PARQUET:
        frame = _table(parse_parquet_input, BytesIO(raw), kind="Parquet")
    else:
        body: Any = parse_json(raw)
        return _parse_json(body, signature, max_records, typed)
    check_rows("body", len(frame), max_records)
    return ScoringInput(frame, None, unwrapped=False)


def media_type(content_type: str | None) -> str:
    """The body's media type, or a 415 for one MLflow's server refuses, by its own rules:
    the type compared as sent, ``charset`` UTF-8 only, no other parameter."""
    if content_type is None:
        # MLflow's server fails with a 500 on a request without one; JSON is what it would be.
        return JSON
    media, *pairs = (part.strip() for part in content_type.split(";"))
    parameters = {key: value for key, _, value in (pair.partition("=") for pair in pairs)}
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        raise _unsupported("the scoring protocol reads UTF-8 only")
    if set(parameters) - {"charset"}:
        raise _unsupported("takes no parameter other than charset")
    if media not in MEDIA_TYPES:
        raise _unsupported(f"must be one of {', '.join(MEDIA_TYPES)}")
    return media


def _unsupported(reason: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"content-type {reason}", errors=[{"field": "content-type", "reason": reason}]
    )


def typed_inputs(signature: Mapping[str, str | None] | None) -> bool:
    """Whether a version's signature (the routing table's form) came from type hints."""
    return str((signature or {}).get(TYPE_HINT_KEY)).lower() == "true"


def _parse_json(
    body: Any, signature: ModelSignature | None, max_records: int | None, typed: bool
) -> ScoringInput:
    if not isinstance(body, dict):
        raise bad_body("must be a JSON object with one of " + ", ".join(FORMATS))
    if any(key in body for key in LLM_KEYS):
        # As MLflow: the body is the model's input, the keys the signature names as params
        # aside (anything else would never reach the model).
        names = {p.name for p in signature.params.params} if signature and signature.params else ()
        data = {k: v for k, v in body.items() if k not in names}
        return ScoringInput(data, {k: v for k, v in body.items() if k in names}, unwrapped=True)
    check_count(body, max_records)
    data = {key: body[key] for key in FORMATS if key in body}
    if len(data) != 1:
        found = f"; it has {', '.join(data)}" if data else ""
        raise bad_body(f"needs exactly one of {', '.join(FORMATS)} (and 'params'){found}")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(
            "params must be a JSON object",
            errors=[{"field": "params", "reason": "must be a JSON object"}],
        )
    (field,) = data
    if typed:
        if field != "inputs":
            reason = "must be 'inputs' for a version whose signature comes from type hints"
            raise InvalidInput(f"{field} {reason}", errors=[{"field": field, "reason": reason}])
        # MLflow checks them against the type hints itself, in predict.
        return ScoringInput(data[field], params, unwrapped=False)
    columns = mlflow_frames.plain_columns(signature)
    if columns is not None:
        rows = mlflow_frames.records(field, data[field], columns)
        if rows is not None:
            return ScoringInput(None, params, unwrapped=False, records=rows, columns=columns)
    tensors = tensor_inputs.specs(signature)
    if tensors is not None:
        tensor = tensor_inputs.read(field, data[field], tensors)
        if tensor is not None:
            return ScoringInput(tensor.model_input(), params, unwrapped=False, records=tensor)
    schema: Any = signature.inputs if signature is not None else None
    try:
        parsed = infer_and_parse_data(data, schema)
    except (MlflowException, ValueError, TypeError, KeyError, IndexError):
        # MLflow's message quotes the data; the field and the rule it broke are enough.
        reason = "cannot be read as MLflow reads it for this version's signature"
        problem = [{"field": field, "reason": reason}]
        raise InvalidInput(f"{field} {reason}", errors=problem) from None
    return ScoringInput(parsed, params, unwrapped=False)


def _table(reader: Any, source: Any, *, kind: str, **options: Any) -> pd.DataFrame:
    try:
        frame: pd.DataFrame = reader(source, **options)
    except MlflowException as exc:
        cause = type(exc.__context__).__name__ if exc.__context__ is not None else "error"
        raise bad_body(f"is not a {kind} table pandas can read ({cause})") from None
    return frame


def answer(prediction: Any, unwrapped: bool) -> Any:
    """The JSON answer MLflow's server gives for ``prediction``, NaN and infinities as null
    (which MLflow writes as bare ``NaN``, not JSON)."""
    predictions = _predictions(prediction)
    return predictions if unwrapped else {"predictions": predictions}


@dataclass(frozen=True)
class Whole:
    """A prediction MLflow answers as one value (a dict, a scalar), not as a list of rows."""

    value: Any


def answer_rows(prediction: Any, outputs: Any = None) -> list[Any]:
    """MLflow's answer for ``prediction`` as rows, one per input row of a model that answers
    row by row (what a batched call is cut into); a prediction MLflow does not answer as a list
    is one ``Whole``, which a call of several requests cannot be cut into (the batcher then
    predicts each alone). ``outputs`` is unused: MLflow's answer does not depend on them."""
    predictions = _predictions(prediction)
    return predictions if isinstance(predictions, list) else [Whole(predictions)]


def rows_answer(rows: list[Any]) -> dict[str, Any]:
    """The answer of a request whose share of a call is ``rows`` (from ``answer_rows``)."""
    if len(rows) == 1 and isinstance(rows[0], Whole):
        return {"predictions": rows[0].value}
    return {"predictions": rows}


def _predictions(prediction: Any) -> Any:
    if isinstance(prediction, np.ndarray):
        prediction = prediction.tolist()
    elif isinstance(prediction, pd.DataFrame):
        prediction = _records(prediction)
    elif isinstance(prediction, pd.Series):
        # MLflow makes a one-column frame of it: records keyed by the series' name, or 0.
        prediction = _records(pd.DataFrame(prediction))
    return jsonable(prediction)


def _records(frame: pd.DataFrame) -> list[Any]:
    """``frame.to_dict(orient="records")``, as MLflow answers a frame, column by column: the
    same values once made JSON (``jsonable``), at a fraction of the CPU."""
    if not frame.columns.is_unique:
        return cast(list[Any], frame.to_dict(orient="records"))
    names = list(frame.columns)
    columns = [frame[name].tolist() for name in names]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def ping() -> Response:
    """MLflow's ``/ping`` and ``/health`` answer, exactly: a newline, typed as JSON."""
    return Response("\n", media_type=JSON)


def version() -> Response:
    """MLflow's ``/version`` answer, exactly: its version, bare (not a JSON string)."""
    return Response(VERSION, media_type=JSON)
