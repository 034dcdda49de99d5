"""The model registry: versioned exports on storage with aliases, lineage and history
(:mod:`tfos_jobs.registry.models`); ``tfos-registry`` is its command line."""
from tfos_jobs.registry.models import (
    CHALLENGER,
    CHAMPION,
    ModelRegistry,
    RegistryError,
    State,
    list_models,
    parse_ref,
    resolver,
)

__all__ = ["CHALLENGER", "CHAMPION", "ModelRegistry", "RegistryError", "State", "list_models", "parse_ref", "resolver"]
