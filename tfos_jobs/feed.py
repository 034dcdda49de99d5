"""``from tfos_jobs.feed import DataFrameSource``: the DataFrame feed's public names at the path users
import. The feed itself is split by where it runs: ``driver/feed.py`` (coordinator),
``executor/feed.py`` (senders), ``tfnode/feed.py`` (receiver), ``wire/feed.py`` (protocol)."""
from tfos_jobs.driver.feed import FeedDriver, parquet_scan_files
from tfos_jobs.sources import DataFrameSource
from tfos_jobs.tfnode.feed import FeedReceiver
from tfos_jobs.wire.feed import FeedError, FeedSpec

__all__ = ["DataFrameSource", "FeedDriver", "FeedError", "FeedReceiver", "FeedSpec", "parquet_scan_files"]
