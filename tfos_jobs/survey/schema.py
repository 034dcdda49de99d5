"""The survey spec file and the checks that run before any Spark work.

A spec (YAML or JSON, on any storage URI) names the target questions and how to treat the other
columns; every key but ``targets`` is optional::

    targets: [vote, PID]            # questions to predict (each needs at least two distinct answers)
    id: respondent_id               # kept in predictions and used as the split key (default: whole row)
    columns:                        # treatments; unlisted columns are inferred (see ``infer``)
      educ: categorical
      selfLR: {type: ordinal, order: [1, 2, 3, 4, 5, 6, 7]}
      age: numeric
      popul: ignore
      q17: {type: categorical, missing_codes: {refused: [98], not_asked: [99]}}   # per-column codes
    missing_codes:                  # answer codes that are not answers, for every column
      missing: ["", NA]             # (empty cells and nulls are always "missing")
      refused: [-8, refused]
      not_asked: [-9]
    infer:
      max_categories: 20            # integer columns with at most this many distinct answers: categorical
      max_vocab: 1000               # most frequent answers kept per categorical column (others: "other")
      min_count: 1                  # answers seen fewer times in training: "other"
    split: {validation_fraction: 0.2, seed: 0, fold: 0}   # fold i of k: validation_fraction 1/k
    model: {hidden: [128, 64], embedding_dim: 8, dropout: 0.1, learning_rate: 0.002}

Treatments: ``categorical`` (ids → embeddings in the model, one-hot in the LR baseline), ``ordinal``
(position in ``order`` scaled to [0, 1]; ``order`` defaults to the sorted answers), ``numeric``
(standardized), ``ignore``. Missing, refused and not-asked answers become their own ids for
categorical columns and an imputed value plus one 0/1 indicator column per kind for ordinal and
numeric columns; for a target they are not an answer: such rows are left out of that target's loss
and metrics (label -1).
"""
from __future__ import annotations

import io
import json
import math
import re
from typing import Any, Callable, Iterator

import hdfs_io

TYPES = ("categorical", "ordinal", "numeric", "ignore")
KINDS = ("missing", "refused", "not_asked")
DEFAULT_MISSING = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
TOP_KEYS = {"targets", "id", "columns", "missing_codes", "infer", "split", "model"}


class SpecError(ValueError):
    """The spec does not parse, or does not fit the data: raised before any Spark work."""


def canonical(value: Any) -> str | None:
    """The string form answers are compared in (the same rule as :func:`prep.canonical_col` in
    Spark): trimmed text; numbers with an integral value without their decimal part (``2.0`` → ``2``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            return text
        if not text or text.lower() in ("nan", "inf", "-inf", "infinity", "-infinity", "+inf"):
            return text
    if math.isnan(number) or math.isinf(number):
        return None if math.isnan(number) else str(number)
    if number == math.floor(number) and abs(number) < 2 ** 63:
        return str(int(number))
    return repr(number)


def sort_answers(values: Any) -> list[str]:
    """Numeric answers in numeric order, then text answers alphabetically."""
    def key(v):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)
    return sorted(values, key=key)


class Spec:
    def __init__(self, targets: list[str], id_column: str | None = None, columns: dict | None = None,
                 missing_codes: dict | None = None, infer: dict | None = None, split: dict | None = None,
                 model: dict | None = None, source: str = "<spec>"):
        self.targets = list(targets)
        self.id_column = id_column
        self.columns = columns or {}           # name -> {"type", "order", "missing_codes"}
        self.missing_codes = missing_codes     # kind -> [canonical codes]
        self.infer = infer
        self.split = split
        self.model = model or {}
        self.source = source

    def codes_for(self, column: str) -> dict[str, list[str]]:
        """kind -> list of canonical codes for one column (global codes, then the column's own)."""
        entry = self.columns.get(column, {})
        own, answers = entry.get("missing_codes", {}), set(entry.get("order", []))
        # An answer the column's order lists is an answer, even when it reads like a missing code
        # ("None" as in "how much exercise?").
        return {kind: sorted((set(self.missing_codes[kind]) | set(own.get(kind, []))) - answers) for kind in KINDS}

    def to_dict(self) -> dict:
        return {"targets": self.targets, "id": self.id_column, "columns": self.columns,
                "missing_codes": self.missing_codes, "infer": self.infer, "split": self.split, "model": self.model}


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Parse YAML or JSON text into a :class:`Spec`; every problem raises :class:`SpecError`."""
    import yaml   # PyYAML: loaded only when a spec is read
    try:
        raw = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as err:
        raise SpecError(f"spec {source} does not parse as YAML or JSON: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec {source} must be a mapping with at least 'targets', got {type(raw).__name__}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SpecError(f"spec {source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")

    def fail(message):
        raise SpecError(f"spec {source}: {message}")

    targets, id_column = _targets_and_id(raw, fail)
    missing = _codes(raw.get("missing_codes"), "missing_codes", fail)
    missing["missing"] = sorted(set(missing["missing"]) | {canonical(c) for c in DEFAULT_MISSING})
    raw_columns = raw.get("columns") or {}
    if not isinstance(raw_columns, dict):
        fail("'columns' must be a mapping of column name to a type or {type: ...}")
    columns = {str(name): _column(str(name), entry, targets, id_column, fail) for name, entry in raw_columns.items()}
    infer, split = _infer_and_split(raw, fail)
    return Spec(targets, id_column, columns, missing, infer, split, _model(raw, fail), source)


def _targets_and_id(raw: dict, fail: Callable[[str], None]) -> tuple[list[str], str | None]:
    targets = raw.get("targets")
    if isinstance(targets, str):
        targets = [targets]
    if not targets or not isinstance(targets, list) or not all(isinstance(t, (str, int)) for t in targets):
        fail("'targets' must be a non-empty list of column names")
    targets = [str(t) for t in targets]
    if len(set(targets)) != len(targets):
        fail(f"'targets' lists a column twice: {targets}")
    id_column = raw.get("id")
    if id_column is not None and not isinstance(id_column, (str, int)):
        fail("'id' must be a column name")
    id_column = None if id_column is None else str(id_column)
    if id_column in targets:
        fail(f"the id column {id_column!r} cannot be a target")
    return targets, id_column


def _column(name: str, entry: Any, targets: list[str], id_column: str | None,
            fail: Callable[[str], None]) -> dict:
    """One ``columns`` entry: ``{"type", "order"?, "missing_codes"?}`` (type ``auto``: left to inference)."""
    if isinstance(entry, str):
        entry = {"type": entry}
    if not isinstance(entry, dict):
        fail(f"column {name!r}: expected a type name or a mapping, got {entry!r}")
    extra = set(entry) - {"type", "order", "missing_codes"}
    if extra:
        fail(f"column {name!r}: unknown key(s) {sorted(extra)}")
    ctype = entry.get("type")
    if ctype is None and "order" in entry:
        ctype = "ordinal"
    if ctype is None and "missing_codes" in entry:
        ctype = "auto"
    if ctype not in TYPES + ("auto",):
        fail(f"column {name!r}: type must be one of {', '.join(TYPES)}, got {ctype!r}")
    out = {"type": ctype}
    if "order" in entry:
        out["order"] = _order(name, ctype, entry["order"], fail)
    if "missing_codes" in entry:
        out["missing_codes"] = _codes(entry["missing_codes"], f"column {name!r} missing_codes", fail)
    if name in targets and ctype not in ("categorical", "ordinal", "auto"):
        fail(f"target {name!r} is predicted as a choice among its answers: its type must be categorical or "
             f"ordinal (or left out), not {ctype!r}")
    if name == id_column and ctype != "auto":
        fail(f"the id column {name!r} takes no type")
    return out


def _order(name: str, ctype: str, order: Any, fail: Callable[[str], None]) -> list[str]:
    if ctype != "ordinal":
        fail(f"column {name!r}: 'order' is only for ordinal columns")
    if not isinstance(order, list) or len(order) < 2:
        fail(f"column {name!r}: 'order' must list at least two answers, lowest first")
    order = [canonical(v) for v in order]
    if len(set(order)) != len(order):
        fail(f"column {name!r}: 'order' lists an answer twice")
    return order


def _infer_and_split(raw: dict, fail: Callable[[str], None]) -> tuple[dict, dict]:
    infer = {"max_categories": 20, "max_vocab": 1000, "min_count": 1}
    infer.update(_options(raw.get("infer"), "infer", infer, fail))
    split = {"validation_fraction": 0.2, "seed": 0, "fold": 0}
    split.update(_options(raw.get("split"), "split", split, fail))
    if not 0.0 < float(split["validation_fraction"]) < 1.0:
        fail("split.validation_fraction must be between 0 and 1 (exclusive)")
    check_fold(int(split["fold"]), float(split["validation_fraction"]), fail)
    if int(infer["max_vocab"]) < 1 or int(infer["max_categories"]) < 1 or int(infer["min_count"]) < 1:
        fail("infer.max_vocab, infer.max_categories and infer.min_count must be positive")
    return infer, split


def check_fold(fold: int, fraction: float, fail: Callable[[str], None]) -> None:
    """Fold ``i`` validates on the ``i``-th slice of width ``fraction``: with fraction 1/k, folds
    0..k-1 are k-fold cross-validation."""
    if fold < 0 or (fold + 1) * fraction > 1.0 + 1e-9:
        fail(f"split fold {fold} with validation_fraction {fraction} does not fit: folds run from 0 to "
             f"{max(int(1.0 / fraction + 1e-9) - 1, 0)}")


def _model(raw: dict, fail: Callable[[str], None]) -> dict:
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        fail("'model' must be a mapping")
    unknown = set(model) - {"hidden", "embedding_dim", "dropout", "learning_rate"}
    if unknown:
        fail(f"model: unknown key(s) {sorted(unknown)}")
    return model


def _codes(raw: Any, where: str, fail: Callable[[str], None]) -> dict[str, list[str]]:
    codes = {kind: [] for kind in KINDS}
    if raw is None:
        return codes
    if not isinstance(raw, dict):
        fail(f"{where} must map missing/refused/not_asked to lists of codes")
    for kind, values in raw.items():
        if kind not in KINDS:
            fail(f"{where}: unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
        if not isinstance(values, list):
            values = [values]
        codes[kind] = [canonical("" if v is None else v) for v in values]
    seen = {}
    for kind in KINDS:
        for code in codes[kind]:
            if code in seen and seen[code] != kind:
                fail(f"{where}: code {code!r} is both {seen[code]} and {kind}")
            seen[code] = kind
    return codes


def _options(raw: Any, where: str, defaults: dict, fail: Callable[[str], None]) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail(f"'{where}' must be a mapping")
    unknown = set(raw) - set(defaults)
    if unknown:
        fail(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
    out = {}
    for key, value in raw.items():
        try:
            out[key] = type(defaults[key])(value)
        except (TypeError, ValueError):
            fail(f"{where}.{key} must be a number, got {value!r}")
    return out


def load_spec(uri: str) -> Spec:
    if not hdfs_io.exists(uri):
        raise SpecError(f"spec file {uri} does not exist")
    with hdfs_io.open(uri, "rb") as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"spec {uri} is not UTF-8 text") from None
    return parse_spec(text, source=uri)


# ------------------------------------------------------------------------------ the data, without Spark


def data_files(uri: str) -> list:
    if not hdfs_io.exists(uri):
        raise FileNotFoundError(f"input data {uri} does not exist")
    files = hdfs_io.list_data_files(uri)
    if not files:
        raise FileNotFoundError(f"input data {uri} holds no data files")
    return files


def detect_format(uri: str, fmt: str = "auto") -> str:
    """'csv' or 'parquet': given, from the file name, else from the first file's magic bytes."""
    if fmt in ("csv", "parquet"):
        return fmt
    if fmt != "auto":
        raise ValueError(f"format must be auto, csv or parquet, got {fmt!r}")
    first = data_files(uri)[0].uri
    name = first.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    with hdfs_io.open(first, "rb") as handle:
        return "parquet" if handle.read(4) == b"PAR1" else "csv"


def _csv_stream(uri: str) -> Any:
    raw = hdfs_io.open(uri, "rb")
    if uri.endswith(".gz"):
        import pyarrow as pa
        return pa.CompressedInputStream(raw, "gzip")
    return raw


def read_header(uri: str, fmt: str) -> list[str]:
    """Column names of a CSV (first file's header) or Parquet data set (first file's schema)."""
    first = data_files(uri)[0].uri
    if fmt == "parquet":
        import pyarrow.parquet as pq
        with hdfs_io.open(first, "rb") as handle:
            return list(pq.ParquetFile(io.BytesIO(handle.read()) if not handle.seekable() else handle)
                        .schema_arrow.names)
    with _csv_stream(first) as handle:
        line = io.TextIOWrapper(handle, encoding="utf-8", newline="").readline()
    import csv
    header = next(csv.reader([line]), [])
    if not header:
        raise SpecError(f"input data {uri}: {first} has no header line")
    return [h.strip() for h in header]


def iter_column_values(uri: str, fmt: str, columns: list[str],
                       batch_rows: int = 65536) -> Iterator[dict[str, list]]:
    """Yield ``{column: [canonical values]}`` batches of the given columns, file by file."""
    for info in data_files(uri):
        if fmt == "parquet":
            batches = hdfs_io.iter_record_batches([info], columns=list(columns), batch_size=batch_rows)
        else:
            import pyarrow as pa
            from pyarrow import csv
            stream = _csv_stream(info.uri)
            batches = csv.open_csv(stream, read_options=csv.ReadOptions(block_size=1 << 22),
                                   convert_options=csv.ConvertOptions(
                                       include_columns=list(columns),
                                       column_types={c: pa.string() for c in columns},
                                       strings_can_be_null=False))
        for batch in batches:
            yield {c: [canonical(v) for v in batch.column(c).to_pylist()] for c in columns}


def preflight(spec: Spec, uri: str, fmt: str = "auto") -> tuple[str, list[str]]:
    """Check the spec against the data on the driver, before Spark starts; return (format, header).

    Raises :class:`SpecError` for a target or listed column missing from the data and for a target
    with fewer than two distinct answers (missing/refused/not-asked codes are not answers). The answer
    scan reads only the target columns and stops as soon as every target has shown two answers.
    """
    fmt = detect_format(uri, fmt)
    header = read_header(uri, fmt)
    names = set(header)
    absent = [t for t in spec.targets if t not in names]
    if absent:
        raise SpecError(f"target question(s) {absent} not in the data {uri}; its columns are: "
                        f"{', '.join(header[:50])}{' ...' if len(header) > 50 else ''}")
    if spec.id_column and spec.id_column not in names:
        raise SpecError(f"id column {spec.id_column!r} is not in the data {uri}")
    unknown = [c for c in spec.columns if c not in names]
    if unknown:
        raise SpecError(f"spec {spec.source} lists column(s) {unknown} that are not in the data {uri}")
    if len(names) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise SpecError(f"input data {uri} has duplicate column names: {dupes}")
    not_answers = {t: {c for codes in spec.codes_for(t).values() for c in codes} for t in spec.targets}
    answers = {t: set() for t in spec.targets}
    pending = set(spec.targets)
    for batch in iter_column_values(uri, fmt, spec.targets):
        for target in list(pending):
            bad = not_answers[target]
            for value in batch[target]:
                if value is not None and value not in bad:
                    answers[target].add(value)
                    if len(answers[target]) >= 2:
                        pending.discard(target)
                        break
        if not pending:
            break
    for target in spec.targets:
        if len(answers[target]) < 2:
            found = f"only the answer {next(iter(answers[target]))!r}" if answers[target] else "no answers at all"
            raise SpecError(f"target question {target!r} has {found} in {uri} (missing/refused/not-asked codes "
                            "excluded): there is nothing to predict; drop it from 'targets'")
    return fmt, header


_NAME = re.compile(r"[^A-Za-z0-9_]")


def safe_name(name: str, prefix: str, taken: set[str]) -> str:
    """A column / TF input name made of [A-Za-z0-9_], unique within ``taken`` (which it joins)."""
    base = prefix + (_NAME.sub("_", name) or "col")
    out, n = base, 1
    while out.lower() in taken:
        n += 1
        out = f"{base}_{n}"
    taken.add(out.lower())
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
