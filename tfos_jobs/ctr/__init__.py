"""Click-through-rate prediction on Criteo-format click logs, end to end on Spark + TensorFlow.

generate (:mod:`.synthetic`) -> prep on Spark (:mod:`.prep`, row format in :mod:`.schema`) -> distributed
training, evaluation and batch scoring (:mod:`.steps`, the model and its task in :mod:`.model`, its Keras
layers in :mod:`.layers`); CLI in :mod:`.cli`.
"""
