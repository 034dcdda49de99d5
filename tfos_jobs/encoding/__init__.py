"""Encodings from raw records to model inputs, defined once as data (:mod:`.spec`) and run by two
interpreters: Spark columns (:mod:`.spark_columns`: prep, batch and streaming scoring) and NumPy
(:mod:`.arrays`: the online server). A model never meets features encoded by a copy of the code
that encoded its training data."""
