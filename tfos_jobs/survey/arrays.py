"""The NumPy twin of the survey prep's Spark encoding (:func:`prep.canonical_col_of` and
:func:`prep.transform` with a plan), for the online server: respondents (dicts of answers) to the
export's inputs, the same values Spark computes from the same answers (a test checks it).

Spark's semantics, where Python's differ: ``trim`` cuts spaces only; text becomes a number as
Java's ``Double.parseDouble`` reads it (``2d``, hexadecimal, ``Infinity``) or as one of Spark's
special literals (``inf``, ``nan``), else null; the arithmetic is in doubles, cast to float32 last.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from tfos_jobs.survey.prep import FIRST_ANSWER_ID, MAX_NUMBER, RESERVED_IDS
from tfos_jobs.survey.schema import KINDS

_JAVA_DOUBLE = re.compile(
    r"[\x00-\x20]*([+-]?)(NaN|Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+)[fFdD]?[\x00-\x20]*")
_SPARK_SPECIAL = {"inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf,
                  "-inf": -math.inf, "-infinity": -math.inf, "nan": math.nan}
_JAVA_SPACE = "".join(chr(c) for c in range(0x21))


def spark_double(text: str) -> float | None:
    """``try_cast(text AS double)``."""
    match = _JAVA_DOUBLE.fullmatch(text)
    if match is None:
        return _SPARK_SPECIAL.get(text.strip(_JAVA_SPACE).lower())
    sign, body = match.groups()
    if body == "NaN":
        value = math.nan
    elif body == "Infinity":
        value = math.inf
    elif body[:2] in ("0x", "0X"):
        value = float.fromhex(body)
    else:
        value = float(body)
    return -value if sign == "-" else value


def canonical(value: str | None) -> str | None:
    """:func:`prep.canonical_col_of` of one answer given as text."""
    if value is None:
        return None
    text = value.strip(" ")
    number = spark_double(text)
    if readable(number) and number == math.floor(number):
        return str(int(number))
    return text


def readable(number: float | None) -> bool:
    """:func:`prep.readable_number`."""
    return number is not None and not math.isnan(number) and abs(number) < MAX_NUMBER


def answer_text(value: Any) -> str | None:
    """An answer of a JSON record as the text Spark's ``from_json`` gives a string field."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def encode(respondents: Sequence[dict], plan: dict) -> dict[str, np.ndarray]:
    """The plan's features (``prep.feature_inputs`` order and dtypes) of each respondent; a question
    a respondent lacks is missing, as in batch prediction."""
    answers = {}
    features = {}
    for f in plan["features"]:
        column = f["column"]
        if column not in answers:
            answers[column] = [canonical(answer_text(r.get(column))) for r in respondents]
        features.update(_feature(f, answers[column]))
    return features


def _kind(value: str | None, codes: dict) -> str | None:
    if value is None or value in codes["missing"]:
        return "missing"
    for kind in KINDS[1:]:
        if value in codes[kind]:
            return kind
    return None


def _feature(f: dict, values: list) -> dict[str, np.ndarray]:
    kinds = [_kind(v, f["codes"]) for v in values]
    if f["type"] == "categorical":
        ids = {answer: i + FIRST_ANSWER_ID for i, answer in enumerate(f["vocab"])}
        return {f["input"]: np.array([RESERVED_IDS[k] if k else ids.get(v, 0) for v, k in zip(values, kinds)],
                                     dtype=np.int64)}
    encoded, valid = [], []
    for value, kind in zip(values, kinds):
        if f["type"] == "ordinal":
            order = f["order"]
            ok = kind is None and value in order
            encoded.append(order.index(value) / float(len(order) - 1) if ok else float(f["impute"]))
        else:
            number = spark_double(value) if kind is None else None
            ok = readable(number)
            encoded.append((number - f["mean"]) / f["std"] if ok else 0.0)
        valid.append(ok)
    out = {f["input"]: np.array(encoded, dtype=np.float64).astype(np.float32)}
    for kind, name in f.get("indicators", {}).items():
        flags = [k == kind or (kind == "missing" and k is None and not ok) for k, ok in zip(kinds, valid)]
        out[name] = np.array(flags, dtype=np.float32)
    return out
