"""The Criteo Display Advertising row format and the prepped (Parquet) feature layout.

A raw row is one line, tab-separated: ``label``, 13 integer features, 26 categorical features (hashed
values written as hex strings). Any feature may be empty (missing); the label may not.
"""
NUM_INTEGER = 13
NUM_CATEGORICAL = 26
NUM_FIELDS = 1 + NUM_INTEGER + NUM_CATEGORICAL

INTEGER = [f"I{i}" for i in range(1, NUM_INTEGER + 1)]
CATEGORICAL = [f"C{i}" for i in range(1, NUM_CATEGORICAL + 1)]
RAW_COLUMNS = ["label"] + INTEGER + CATEGORICAL
LABEL = "label"

# Prepped columns: I<k> float32 (signed log1p, 0 when missing), I<k>_missing float32 (1.0 when
# missing), C<k> int64 (0 = missing, 1..buckets-1 = hashed value).
MISSING_SUFFIX = "_missing"
INTEGER_MISSING = [f"{name}{MISSING_SUFFIX}" for name in INTEGER]
DENSE_FEATURES = INTEGER + INTEGER_MISSING
FEATURES = DENSE_FEATURES + CATEGORICAL

# Validation rules (also used, as regular expressions, by the Spark prep).
_INTEGER = r"-?[0-9]{1,18}"
_CATEGORICAL = r"[0-9A-Fa-f]{1,16}"
_LABEL = r"[01]"
INTEGER_PATTERN = f"^{_INTEGER}$"
CATEGORICAL_PATTERN = f"^{_CATEGORICAL}$"
LABEL_PATTERN = f"^{_LABEL}$"


def line_pattern(labeled: bool = True) -> str:
    """One regular expression that a line matches only when every field passes its rule above (each
    integer or categorical field may also be empty). The prep tries it first: one match per good line
    instead of a check per field; the per-field checks name the reason only for lines that fail it."""
    fields = ([_LABEL] if labeled else []) + [f"(?:{_INTEGER})?"] * NUM_INTEGER \
        + [f"(?:{_CATEGORICAL})?"] * len(CATEGORICAL)
    return "^" + "\t".join(fields) + "$"
