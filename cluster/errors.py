"""Old import path of :class:`cluster.pseudo.errors.ClusterError`."""
from .pseudo.errors import ClusterError

__all__ = ["ClusterError"]
