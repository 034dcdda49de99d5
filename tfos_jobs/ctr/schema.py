"""The Criteo Display Advertising row format and the prepped (Parquet) feature layout.

A raw row is one line, tab-separated: ``label``, 13 integer features, 26 categorical features (hashed
values written as hex strings). Any feature may be empty (missing); the label may not.
"""
from tfos_jobs.encoding.spec import HashedBucket, Number, RecordEncoding, Rule, SignedLog1p

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

# Validation rules: regular expression bodies (Java and Python share this syntax).
_INTEGER = r"-?[0-9]{1,18}"
_CATEGORICAL = r"[0-9A-Fa-f]{1,16}"
_LABEL = r"[01]"


def encoding(hash_buckets: int, labeled: bool = True) -> RecordEncoding:
    """The row format and the prepped features as one declarative encoding: Spark runs it in prep and
    in batch and streaming scoring (:mod:`tfos_jobs.encoding.spark_columns`), the online server runs
    it on single records (:mod:`tfos_jobs.encoding.arrays`)."""
    if hash_buckets < 2:
        raise ValueError(f"hash_buckets must be at least 2, got {hash_buckets}")
    offset = 1 if labeled else 0
    rules = [Rule(LABEL, 0, _LABEL, "label must be 0 or 1, found '", quote=20, allow_empty=False)] if labeled else []
    features: list = [Number(LABEL, 0)] if labeled else []
    for i, name in enumerate(INTEGER):
        rules.append(Rule(name, offset + i, _INTEGER, f"{name} is not an integer: '"))
        features.append(SignedLog1p(name, offset + i, name + MISSING_SUFFIX))
    for j, name in enumerate(CATEGORICAL):
        index = offset + NUM_INTEGER + j
        rules.append(Rule(name, index, _CATEGORICAL, f"{name} is not a hex string: '"))
        features.append(HashedBucket(name, index, salt=j, buckets=hash_buckets))
    return RecordEncoding("\t", NUM_FIELDS - (0 if labeled else 1), tuple(rules), tuple(features))

