"""Click-through-rate prediction on Criteo-format click logs, end to end on Spark + TensorFlow.

generate (``generator``) -> prep on Spark (``prep``) -> distributed training (``train`` / ``model``)
-> evaluation (``evaluate``) -> batch scoring on Spark (``tfos_jobs.scoring``); CLI in ``cli``.
"""
