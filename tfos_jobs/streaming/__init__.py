"""Streaming inference and quality monitoring on Spark Structured Streaming.

The data path, three queries that each keep their own checkpoint (exactly once end to end: Spark's
file sink commits a micro-batch's files in its ``_spark_metadata`` log, and Spark readers of the
output see committed files only; the metrics sink writes one file per micro-batch, replaced when a
batch is replayed):

1. :func:`~tfos_jobs.streaming.pipeline.start_scoring`: raw records (a directory new files land in,
   or Kafka) → the job's encoding (the batch prep's own code) → the export scored in Arrow batches
   → predictions with ``id``, ``event_time``, ``prediction`` and ``model_version``; malformed records
   go to a quarantine with their reason.
2. :func:`~tfos_jobs.streaming.pipeline.start_labeling`: predictions joined with labels that arrive
   later (a click log) by id, with a watermark so state stays bounded; predictions whose label never
   came count as negatives (or are dropped).
3. :func:`~tfos_jobs.streaming.pipeline.start_monitor`: labeled predictions → quality per window:
   sliding (Spark's ``window()``), landmark, fading and tilted-time (:mod:`.windows`), written to a
   metrics sink (JSON lines on any storage URI) and the console; :mod:`.report` plots every
   window's AUC over time from that sink.

The jobs bring only their encoding and their batch scoring function: ``tfos_jobs.ctr.stream``
(impressions and clicks) and ``tfos_jobs.survey.stream`` (JSON respondent records).
"""
