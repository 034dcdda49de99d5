"""Code that runs on the Spark driver: `fit` (attempts, watching the TF cluster) and the feed's coordinator."""
