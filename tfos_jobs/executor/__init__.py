"""Code that runs in Spark executors: the TF node supervisor and the feed's senders."""
