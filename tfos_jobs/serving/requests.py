"""TF Serving's REST request and response bodies, and raw records, to and from model columns.

Everything a client can get wrong is a :class:`BadRequest`: one line naming the field (``instances[3]:
missing input 'C7'``), answered with 400 and ``{"error": ...}``, never a 500.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import orjson

from tfos_jobs.encoding import arrays
from tfos_jobs.encoding.spec import RecordEncoding

_KINDS = {"i": "an integer", "u": "an integer", "f": "a number", "b": "a boolean", "S": "a string",
          "U": "a string", "O": "a string"}


class BadRequest(ValueError):
    """The request does not fit the model: its message says where."""


def parse_json(body: bytes) -> dict:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(value).__name__}")
    return value


def model_columns(body: dict, inputs: Mapping[str, Any], max_instances: int) -> tuple[dict, int, str]:
    """``(columns, rows, "row" | "columnar")`` from a ``:predict`` body (``instances`` or ``inputs``)."""
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise BadRequest("give either 'instances' (row format) or 'inputs' (columnar format)")
    unknown = set(body) - {"instances", "inputs", "signature_name"}
    if unknown:
        raise BadRequest(f"unknown request field(s) {sorted(unknown)}")
    if body.get("signature_name", "serving_default") != "serving_default":
        raise BadRequest(f"signature_name {body['signature_name']!r}: only 'serving_default' is served")
    if has_rows:
        return (*_from_instances(body["instances"], inputs, max_instances), "row")
    return (*_from_inputs(body["inputs"], inputs, max_instances), "columnar")


def _from_instances(instances: Any, inputs: Mapping[str, Any], max_instances: int) -> tuple[dict, int]:
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list")
    _check_count(len(instances), max_instances)
    names = list(inputs)
    if len(names) == 1 and not all(isinstance(i, dict) for i in instances):
        return {names[0]: _column(instances, inputs[names[0]], "instances", names[0])}, len(instances)
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise BadRequest(f"instances[{i}]: expected an object with the inputs {names}")
        if len(instance) != len(names) or any(name not in instance for name in names):
            missing = [n for n in names if n not in instance]
            extra = sorted(set(instance) - set(names))
            raise BadRequest(f"instances[{i}]: " + (f"missing input {missing[0]!r}" if missing
                                                    else f"unknown input {extra[0]!r}"))
    return {name: _column([inst[name] for inst in instances], inputs[name], "instances", name)
            for name in names}, len(instances)


def _from_inputs(given: Any, inputs: Mapping[str, Any], max_instances: int) -> tuple[dict, int]:
    names = list(inputs)
    if not isinstance(given, dict):
        if len(names) != 1:
            raise BadRequest(f"'inputs' must be an object with the inputs {names}")
        given = {names[0]: given}
    missing = [n for n in names if n not in given]
    if missing or len(given) != len(names):
        raise BadRequest(f"inputs: missing input {missing[0]!r}" if missing
                         else f"inputs: unknown input {sorted(set(given) - set(names))[0]!r}")
    rows = None
    for name in names:
        if not isinstance(given[name], list) or not given[name]:
            raise BadRequest(f"inputs[{name!r}] must be a non-empty list (one value per instance)")
        if rows is not None and len(given[name]) != rows:
            raise BadRequest(f"inputs[{name!r}] has {len(given[name])} values, the other inputs {rows}")
        rows = len(given[name])
    _check_count(rows, max_instances)
    return {name: _column(given[name], inputs[name], "inputs", name) for name in names}, rows


def _check_count(rows: int, max_instances: int) -> None:
    if rows > max_instances:
        raise BadRequest(f"{rows} instances in one request; the limit is {max_instances}")


def _column(values: list, info: Any, where: str, name: str) -> np.ndarray:
    """One input's values as the model's dtype and shape, or a BadRequest naming the first bad value."""
    try:
        column = np.asarray(values)
    except ValueError:
        column = np.asarray(values, dtype=object)
    want = info.dtype
    fits = (column.dtype.kind in "iu" if want.kind in "iu" else
            column.dtype.kind in "iuf" if want.kind == "f" else
            column.dtype.kind == "b" if want.kind == "b" else column.dtype.kind in "SU")
    shape_ok = column.ndim == 1 + len(info.shape) and all(
        d is None or d == got for d, got in zip(info.shape, column.shape[1:]))
    if not fits or not shape_ok:
        raise BadRequest(_first_bad(values, info, where, name))
    if want.kind in "iu":
        limits = np.iinfo(want)
        if column.size and (column.min() < limits.min or column.max() > limits.max):
            raise BadRequest(f"{where}: input {name!r} has a value outside {want}")
    return column.astype(want, copy=False)


def _first_bad(values: list, info: Any, where: str, name: str) -> str:
    want = _KINDS.get(info.dtype.kind, str(info.dtype))
    for i, value in enumerate(values):
        kind = np.asarray(value).dtype.kind
        ok = (kind in "iu" if info.dtype.kind in "iu" else kind in "iuf" if info.dtype.kind == "f" else
              kind == "b" if info.dtype.kind == "b" else kind in "SU")
        if not ok or np.ndim(value) != len(info.shape):
            shape = "" if not info.shape else f" of shape {list(info.shape)}"
            return f"{where}[{i}]: input {name!r} must be {want}{shape}, got {orjson.dumps(value).decode()[:60]}"
    return f"{where}: input {name!r} must be {want} per instance"


def predict_response(outputs: dict[str, np.ndarray], layout: str) -> dict:
    """TF Serving's answer: ``predictions`` (one entry per instance; a dict per instance when the model
    has several outputs) or ``outputs`` (columnar)."""
    if layout == "row":
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values()))}
        names = list(outputs)
        rows = len(next(iter(outputs.values())))
        return {"predictions": [{n: outputs[n][i] for n in names} for i in range(rows)]}
    return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else dict(outputs)}


V2_TYPES = {"BOOL": "bool", "INT32": "int32", "INT64": "int64", "FP32": "float32", "FP64": "float64"}
V2_NAMES = {v: k for k, v in V2_TYPES.items()}


def v2_columns(body: dict, inputs: Mapping[str, Any], max_instances: int) -> tuple[dict, int]:
    """Columns from a KServe Open Inference Protocol v2 ``infer`` body (``inputs``: name, shape,
    datatype, flat data)."""
    given = body.get("inputs")
    if not isinstance(given, list) or not given:
        raise BadRequest("'inputs' must be a non-empty list of {name, shape, datatype, data}")
    columns, rows = {}, None
    for i, tensor in enumerate(given):
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor):
            raise BadRequest(f"inputs[{i}] must have name, shape, datatype and data")
        name = tensor["name"]
        if name not in inputs:
            raise BadRequest(f"inputs[{i}]: unknown input {name!r}")
        info = inputs[name]
        if V2_TYPES.get(tensor["datatype"]) != info.dtype.name:
            raise BadRequest(f"inputs[{i}] ({name}): datatype must be {V2_NAMES.get(info.dtype.name)}, "
                             f"got {tensor['datatype']!r}")
        shape, tail = tensor["shape"], [d or 1 for d in info.shape]
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)
                and list(shape[1:]) == tail):
            raise BadRequest(f"inputs[{i}] ({name}): shape must be [batch] + {tail}, got {shape!r}")
        if rows is not None and shape[0] != rows:
            raise BadRequest(f"inputs[{i}] ({name}): batch {shape[0]}, the other inputs {rows}")
        rows = shape[0]
        size = int(np.prod(shape))
        if not isinstance(tensor["data"], list) or len(tensor["data"]) != size:
            raise BadRequest(f"inputs[{i}] ({name}): data must be a flat list of {size} values")
        flat = type(info)(info.dtype, ())
        columns[name] = _column(tensor["data"], flat, f"inputs[{i}].data", name).reshape(shape)
    missing = [n for n in inputs if n not in columns]
    if missing:
        raise BadRequest(f"inputs: missing input {missing[0]!r}")
    if not rows:
        raise BadRequest("inputs: an empty batch")
    _check_count(rows, max_instances)
    return columns, rows


def v2_response(model: str, version: str, outputs: dict[str, np.ndarray]) -> dict:
    return {"model_name": model, "model_version": version, "outputs": [
        {"name": n, "datatype": V2_NAMES.get(a.dtype.name, "BYTES"), "shape": list(a.shape), "data": a.ravel()}
        for n, a in outputs.items()]}


def record_columns(body: dict, encoding: RecordEncoding, max_instances: int) -> tuple[dict, int]:
    """Columns from raw records: ``records`` (strings, e.g. Criteo lines without the label) or
    ``fields`` (lists of strings), encoded as batch prep and scoring encode them."""
    unknown = set(body) - {"records", "fields"}
    if unknown or len(body) != 1:
        raise BadRequest("give either 'records' (strings) or 'fields' (lists of strings)"
                         + (f"; unknown field(s) {sorted(unknown)}" if unknown else ""))
    key, given = next(iter(body.items()))
    if not isinstance(given, list) or not given:
        raise BadRequest(f"'{key}' must be a non-empty list")
    _check_count(len(given), max_instances)
    records = []
    for i, item in enumerate(given):
        if key == "records":
            if not isinstance(item, str):
                raise BadRequest(f"records[{i}] must be a string")
            records.append(item)
            continue
        if not isinstance(item, list) or not all(isinstance(f, str) for f in item):
            raise BadRequest(f"fields[{i}] must be a list of strings")
        if any(encoding.separator in f for f in item):
            raise BadRequest(f"fields[{i}]: a field contains the separator {encoding.separator!r}")
        records.append(encoding.separator.join(item))
    encoded = arrays.encode(records, encoding)
    for i, reason in enumerate(encoded.reasons):
        if reason is not None:
            raise BadRequest(f"{key}[{i}]: {reason[0]}: {reason[1]}")
    return encoded.features, len(records)


def respondent_columns(body: dict, plan: dict, max_instances: int) -> tuple[dict, int]:
    """Columns from survey respondents (``respondents``: objects of answers by question), encoded with
    the plan as batch and stream prediction encode them; an absent question is missing."""
    from tfos_jobs.survey import arrays as survey_arrays
    if set(body) != {"respondents"}:
        raise BadRequest("give 'respondents': a list of objects of answers by question")
    given = body["respondents"]
    if not isinstance(given, list) or not given:
        raise BadRequest("'respondents' must be a non-empty list")
    _check_count(len(given), max_instances)
    for i, respondent in enumerate(given):
        if not isinstance(respondent, dict):
            raise BadRequest(f"respondents[{i}] must be an object of answers by question")
        for question, answer in respondent.items():
            if isinstance(answer, (dict, list)):
                raise BadRequest(f"respondents[{i}]: the answer to {question!r} must be text, a number or null")
    return survey_arrays.encode(given, plan), len(given)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
