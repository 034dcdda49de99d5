class ClusterError(RuntimeError):
    """The pseudo-cluster could not do what was asked; the message says what and where to look."""
