"""Wire protocols shared by both ends of a channel: the control channel and the DataFrame feed."""
