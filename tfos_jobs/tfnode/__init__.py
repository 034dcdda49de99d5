"""Code that runs in the TF node process (started by ``tfos_jobs.executor.node``): the training loops,
the readers of each source, staging, checkpoints, progress and the feed's receiver."""
