"""Survey modelling job: predict how a respondent will answer questions they were not (yet) asked.

Data flows spec → prep → train → evaluate → predict, each a ``tfos-survey`` sub-command (:mod:`.cli`):

* :mod:`.schema`    the spec file (YAML/JSON): targets, column treatments, missing/refused/not-asked codes;
                    parsed and checked against the data before any Spark work (:func:`.schema.preflight`).
* :mod:`.prep`      Spark: profile the training split, resolve column types (inferring unlisted ones),
                    encode (categorical ids, scaled ordinals, standardized numerics, missing indicators),
                    deterministic split, Parquet out plus ``prep.json`` (the plan every later step reads).
* :mod:`.linear`    the logistic regression per target, fitted on the driver (scikit-learn): the model's
                    fixed part.
* :mod:`.model`     the multi-task Keras model (that regression plus a shared network's residual, per
                    target) and its :class:`~tfos_jobs.task.TrainingTask`; its Keras layers in :mod:`.layers`.
* :mod:`.steps`     train (through :func:`tfos_jobs.trainer.fit`), evaluate (per-target accuracy / log loss,
                    MAE of ordinal targets, of the model, the majority class and the model's logistic
                    regression) and predict (answer probabilities for new respondents, written atomically).
* :mod:`.synthetic` the real example (ANES 1996, shipped in statsmodels) and a synthetic generator.
"""
