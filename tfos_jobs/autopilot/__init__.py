"""Automated retraining: a policy (:mod:`.policy`), its judgements (:mod:`.decide`) and the loop that acts on them."""
