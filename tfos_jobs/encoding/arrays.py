"""The NumPy interpreter of a :class:`~.spec.RecordEncoding`: records (Python strings) to feature
arrays, for the online server, where a request holds a few records and Spark is not there.

It gives what :mod:`.spark_columns` gives on the same records, bit for bit (a test checks it on
records at every rule's edge), so it follows Spark's semantics where Python's differ:
- regular expressions are Java's: ``$`` also matches before one line terminator (``\\n``, ``\\r\\n``,
  ``\\r``, ``\\u0085``, ``\\u2028``, ``\\u2029``) that ends the text, but not inside ``\\r\\n``;
- casts from text trim only characters up to U+0020, as Spark's do (Python's ``int`` trims any
  Unicode space);
- hashing is Spark's ``xxhash64`` (XXH64 with seed 42, chained over the arguments).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import xxhash

from tfos_jobs.encoding.spec import HashedBucket, Number, RecordEncoding, SignedLog1p

# Java's ``$`` without MULTILINE: at the end, or before one line terminator that ends the text, but
# never between the ``\r`` and ``\n`` of a final ``\r\n``.
JAVA_END = "(?:\\Z|(?=\r\n\\Z)|(?=[\r\u0085\u2028\u2029]\\Z)|(?<!\r)(?=\n\\Z))"
SPARK_HASH_SEED = 42
_CR_AT_END = re.compile("\r" + JAVA_END)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_ASCII_SPACE = "".join(chr(c) for c in range(0x21))


@dataclass
class Encoded:
    """``reasons[i]``: ``(code, message)`` of record ``i``, or None when it is good; ``features``:
    each output column, one value per good record, in record order."""
    reasons: list
    features: dict

    @property
    def good(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], dtype=bool)


def java_regex(pattern: str) -> re.Pattern:
    """A Java pattern made of ``^``, ``$`` (at its ends) and syntax both dialects share, compiled with
    Java's meaning of ``$``."""
    if not pattern.endswith("$"):
        raise ValueError(f"expected a pattern anchored with $: {pattern!r}")
    return re.compile(pattern[:-1] + JAVA_END)


@lru_cache(maxsize=64)
def _compiled(encoding: RecordEncoding):
    separator = re.compile(encoding.separator)
    record = java_regex(encoding.record_pattern())
    rules = [(rule, java_regex(f"^{rule.body}$")) for rule in encoding.rules]
    return separator, record, rules


def encode(records: Sequence[str], encoding: RecordEncoding) -> Encoded:
    separator, record_pattern, rules = _compiled(encoding)
    reasons, good_fields = [], []
    for record in records:
        line = _CR_AT_END.sub("", record)
        fields = separator.split(line)
        reason = None if record_pattern.search(line) else _first_failure(encoding, rules, fields)
        reasons.append(reason)
        if reason is None:
            good_fields.append(fields)
    features = {}
    for feature in encoding.features:
        features.update(_feature(feature, [fields[feature.index] for fields in good_fields]))
    return Encoded(reasons, features)


def _first_failure(encoding, rules, fields):
    if len(fields) != encoding.fields:
        return "field_count", f"{encoding.count_prefix()}{len(fields)}"
    for rule, pattern in rules:
        value = fields[rule.index]
        if (value or not rule.allow_empty) and not pattern.search(value):
            return rule.code, f"{rule.message}{value[:rule.quote]}'"
    return None


def _feature(feature, values):
    if isinstance(feature, Number):
        return {feature.name: np.array([_spark_float(v) for v in values], dtype=np.float32)}
    if isinstance(feature, SignedLog1p):
        raw = np.array([_spark_long(v) if v != "" else np.nan for v in values], dtype=np.float64)
        missing = np.isnan(raw)
        value = np.where(missing, 0.0, np.sign(raw) * np.log1p(np.abs(raw)))
        return {feature.name: value.astype(np.float32), feature.missing: missing.astype(np.float32)}
    if isinstance(feature, HashedBucket):
        salt = xxhash.xxh64_intdigest(struct.pack("<i", feature.salt), seed=SPARK_HASH_SEED)
        return {feature.name: np.array([_bucket(v.lower(), salt, feature.buckets) for v in values], dtype=np.int64)}
    raise TypeError(f"not a feature of an encoding: {feature!r}")


def _bucket(value: str, salt: int, buckets: int) -> int:
    if value == "":
        return 0
    digest = xxhash.xxh64_intdigest(value.encode("utf-8"), seed=salt)
    signed = digest - (1 << 64) if digest >= (1 << 63) else digest
    return signed % (buckets - 1) + 1        # Python's % of a positive modulus is Spark's pmod


def _spark_long(text: str) -> float:
    """Spark's ``try_cast(text AS bigint)`` (NaN for null), for the digits the rules let through."""
    trimmed = text.strip(_ASCII_SPACE)
    if not _INTEGER.fullmatch(trimmed):
        return np.nan
    value = int(trimmed)
    return float(value) if -(1 << 63) <= value < (1 << 63) else np.nan


def _spark_float(text: str) -> float:
    """Spark's ``try_cast(text AS float)`` for decimal text (NaN for null; Python's ``float`` would
    also take ``1_0`` and Unicode spaces)."""
    trimmed = text.strip(_ASCII_SPACE)
    return float(trimmed) if _DECIMAL.fullmatch(trimmed) else np.nan
