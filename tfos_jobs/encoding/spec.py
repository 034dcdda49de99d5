"""What an encoding is, as data: the fields of a delimited record, the rule each must pass, and the
features computed from them. Nothing here runs anything; :mod:`.spark_columns` and :mod:`.arrays`
interpret a :class:`RecordEncoding` (Spark columns for prep and batch/stream scoring, NumPy for the
online server), and a test keeps the two equal on the same records.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """Field ``index`` must match the regular expression ``body`` (whole field; empty allowed when
    ``allow_empty``). A failure is reported as ``code`` with ``message`` + the field's first
    ``quote`` characters + ``'``."""
    code: str
    index: int
    body: str
    message: str
    quote: int = 40
    allow_empty: bool = True


@dataclass(frozen=True)
class SignedLog1p:
    """Integer field ``index`` as float32 ``sign(x) * log1p(|x|)`` (0 when empty) named ``name``, and
    ``missing`` (float32, 1.0 when empty)."""
    name: str
    index: int
    missing: str


@dataclass(frozen=True)
class HashedBucket:
    """String field ``index`` lower-cased and hashed into ``1 .. buckets - 1`` as int64 (0 when empty):
    ``pmod(xxhash64(salt, value), buckets - 1) + 1``, Spark's ``xxhash64`` (XXH64, seed 42, chained
    over its arguments: the int ``salt``, then the string's UTF-8 bytes)."""
    name: str
    index: int
    salt: int
    buckets: int


@dataclass(frozen=True)
class Number:
    """Field ``index`` as float32 (a label)."""
    name: str
    index: int


Feature = SignedLog1p | HashedBucket | Number


@dataclass(frozen=True)
class RecordEncoding:
    """One record: ``fields`` fields separated by ``separator``; a trailing carriage return is cut off
    first. The record is good when it has ``fields`` fields and passes every rule; the first failure
    names the reason (the field count first, then the rules in order)."""
    separator: str
    fields: int
    rules: tuple[Rule, ...]
    features: tuple[Feature, ...]
    separator_name: str = "tab-separated"

    def __post_init__(self):
        for rule in self.rules:
            if not 0 <= rule.index < self.fields:
                raise ValueError(f"rule {rule.code}: field {rule.index} outside the record's {self.fields} fields")

    def count_prefix(self) -> str:
        """The field-count failure's message, up to the number of fields found."""
        return f"expected {self.fields} {self.separator_name} fields, found "

    def record_pattern(self) -> str:
        """One regular expression (Java/Python syntax, anchored with ``^``/``$``) that a record matches
        only when it passes the field count and every rule: one match per good record instead of a
        check per field. Fields without a rule match anything but the separator."""
        by_index = {rule.index: rule for rule in self.rules}
        parts = []
        for i in range(self.fields):
            rule = by_index.get(i)
            if rule is None:
                parts.append(f"[^{self.separator}]*")
            else:
                parts.append(f"(?:{rule.body})?" if rule.allow_empty else f"(?:{rule.body})")
        return "^" + self.separator.join(parts) + "$"

    def output_names(self) -> list[str]:
        names = []
        for feature in self.features:
            names.append(feature.name)
            if isinstance(feature, SignedLog1p):
                names.append(feature.missing)
        return names
