"""Online inference: exported models served over HTTP with TF Serving's REST API, micro-batched,
swapped to new versions without a failed request.

Entry points: ``tfos-serve`` (:mod:`.cli`) and :class:`~tfos_jobs.serving.app.Server` with a
:class:`~tfos_jobs.serving.config.ServerConfig`. Where code runs: :mod:`.app` on the event loop,
the model calls on :mod:`.batcher`'s threads, loading and swapping on a polling thread
(:mod:`.models`). Raw records are encoded by :mod:`tfos_jobs.encoding.arrays`, the twin of the
Spark encoding that prepped the training data.
"""
