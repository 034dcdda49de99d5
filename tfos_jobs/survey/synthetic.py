"""Survey data: the real example (ANES 1996, shipped offline in ``statsmodels``) and a generator of
synthetic high-dimensional surveys with missing, refused and not-asked answers."""
from __future__ import annotations

import io
from typing import Any

import numpy as np

import hdfs_io
from tfos_jobs.survey.schema import dumps

LIKERT_7 = list(range(1, 8))

ANES96_SPEC = {
    "targets": ["vote", "PID", "selfLR"],
    "id": "respondent",
    "columns": {
        "PID": {"type": "ordinal", "order": list(range(0, 7))},
        "selfLR": {"type": "ordinal", "order": LIKERT_7},
        "ClinLR": {"type": "ordinal", "order": LIKERT_7},
        "DoleLR": {"type": "ordinal", "order": LIKERT_7},
        "TVnews": {"type": "ordinal", "order": list(range(0, 8))},
        "educ": {"type": "ordinal", "order": LIKERT_7},
        "income": {"type": "ordinal", "order": list(range(1, 25))},
        "age": "numeric",
        "popul": "ignore",
        # logpopul is left to inference (numeric)
    },
    "split": {"validation_fraction": 0.25, "seed": 0},
}

ANES96_NOTE = """\
# ANES 1996 pilot study (statsmodels.datasets.anes96): 944 respondents.
# Predict expected vote (0 Clinton, 1 Dole), party identification (PID, 0 strong Democrat .. 6 strong
# Republican) and own left-right placement (selfLR, 1 extremely liberal .. 7 extremely conservative)
# from the other answers: TV news use, where Clinton and Dole stand (1..7), age, education, income and
# the size of the respondent's town.
"""


def anes96_table() -> Any:
    """The ANES 1996 responses as a pyarrow Table, with a ``respondent`` id column."""
    import pyarrow as pa
    try:
        from statsmodels.datasets import anes96
    except ImportError as err:  # pragma: no cover - statsmodels is a dependency
        raise RuntimeError("the ANES 1996 example ships in statsmodels: pip install statsmodels") from err
    frame = anes96.load_pandas().data
    columns = {"respondent": pa.array(np.arange(1, len(frame) + 1, dtype=np.int64))}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if name != "logpopul" and np.all(values == np.round(values)) and name != "popul":
            columns[name] = pa.array(values.astype(np.int64))
        else:
            columns[name] = pa.array(values.astype(np.float64))
    return pa.table(columns)


def write_csv(table: Any, uri: str) -> str:
    """One CSV file with a header, written atomically (a table of a few MB at most)."""
    import pyarrow.csv as pcsv
    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer)
    with hdfs_io.open(uri, "wb") as handle:
        handle.write(buffer.getvalue())
    return uri


def write_example(out_uri: str, name: str = "anes96", fmt: str = "csv", **generator_options: Any) -> tuple[str, str]:
    """Write an example data set and its spec under ``out_uri``; returns ``(data_uri, spec_uri)``.

    ``name`` is ``anes96`` (the real survey) or ``synthetic`` (see :func:`synthetic_survey`).
    """
    if name == "anes96":
        table, spec, note = anes96_table(), ANES96_SPEC, ANES96_NOTE
    elif name == "synthetic":
        table, spec = synthetic_survey(**generator_options)
        note = f"# synthetic survey: {table.num_rows} respondents, {table.num_columns - 1} columns\n"
    else:
        raise ValueError(f"unknown example {name!r}: anes96 or synthetic")
    hdfs_io.mkdirs(out_uri)
    if fmt == "csv":
        data_uri = write_csv(table, hdfs_io.join(out_uri, "responses.csv"))
    elif fmt == "parquet":
        data_uri = hdfs_io.join(out_uri, "responses")
        hdfs_io.write_parquet(table, data_uri, rows_per_file=max(table.num_rows // 4, 1), overwrite=True)
    else:
        raise ValueError(f"format must be csv or parquet, got {fmt!r}")
    spec_uri = hdfs_io.join(out_uri, "spec.yaml")
    import yaml
    with hdfs_io.open(spec_uri, "w") as handle:
        handle.write(note + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None))
    return data_uri, spec_uri


# ------------------------------------------------------------------------------------ synthetic

REFUSED, NOT_ASKED = 98, 99


def synthetic_survey(rows: int = 2000, questions: int = 200, targets: int = 3, factors: int = 4, seed: int = 0,
                     missing_rate: float = 0.03, refused_rate: float = 0.02, routing_rate: float = 0.15) -> tuple[Any, dict]:
    """A synthetic survey driven by latent attitudes; returns ``(pyarrow.Table, spec dict)``.

    Each respondent has ``factors`` latent attitudes. Questions (``q0001``...) are 5-point Likert
    scales (integers 1-5), nominal choices (text ``opt_a``...) or numbers (hours, counts), each loading
    on the attitudes. Answers go missing (blank), are refused (98 / ``refused``) or were not asked
    (99 / ``not asked``: whole blocks skipped by routing). Targets (``t1``...) are 3-4-way choices
    driven by the same attitudes, so the other answers predict them; 10% of targets were not asked.
    The spec lists a third of the Likert questions as ordinal and leaves the rest to inference.
    """
    import pyarrow as pa
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, factors))
    columns = {"rid": pa.array([f"r{seed}-{i:07d}" for i in range(rows)])}
    spec_columns = {}
    kinds = rng.choice(["likert", "nominal", "numeric"], size=questions, p=[0.55, 0.3, 0.15])
    block = np.arange(questions) // 10   # routing skips whole blocks of 10 questions
    skipped_blocks = rng.random((rows, block.max() + 1)) < routing_rate
    for q in range(questions):
        name = f"q{q + 1:04d}"
        loading = rng.normal(size=factors) * (rng.random() < 0.7)
        score = z @ loading + rng.normal(scale=1.0, size=rows)
        if kinds[q] == "likert":
            cuts = np.sort(rng.normal(scale=0.8, size=4))
            values = (1 + np.searchsorted(cuts, score)).astype(object)
            if q % 3 == 0:
                spec_columns[name] = {"type": "ordinal", "order": [1, 2, 3, 4, 5]}
        elif kinds[q] == "nominal":
            options = int(rng.integers(3, 9))
            weights = rng.normal(size=(factors, options))
            logits = z @ weights + rng.gumbel(size=(rows, options))
            values = np.array([f"opt_{chr(97 + k)}" for k in logits.argmax(axis=1)], dtype=object)
        else:
            values = np.round(np.exp(1.5 + 0.4 * score), 1).astype(object)
        u = rng.random(rows)
        values[u < missing_rate] = ""
        values[(u >= missing_rate) & (u < missing_rate + refused_rate)] = \
            "refused" if kinds[q] == "nominal" else REFUSED
        values[skipped_blocks[:, block[q]]] = "not asked" if kinds[q] == "nominal" else NOT_ASKED
        columns[name] = pa.array([str(v) for v in values])
    target_names = []
    for t in range(targets):
        name = f"t{t + 1}"
        options = 3 + t % 2
        weights = rng.normal(scale=1.5, size=(factors, options))
        logits = z @ weights + rng.gumbel(size=(rows, options))
        values = np.array([f"answer_{k}" for k in logits.argmax(axis=1)], dtype=object)
        values[rng.random(rows) < 0.10] = "not asked"
        columns[name] = pa.array([str(v) for v in values])
        target_names.append(name)
    spec = {"targets": target_names, "id": "rid", "columns": spec_columns,
            "missing_codes": {"refused": [REFUSED, "refused"], "not_asked": [NOT_ASKED, "not asked"]}}
    return pa.table(columns), spec


def write_spec(spec: dict, uri: str) -> str:
    with hdfs_io.open(uri, "w") as handle:
        handle.write(dumps(spec))
    return uri
