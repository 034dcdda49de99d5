"""Typed training configs, each parameter defined once: its type, range, default and help.

Runs everywhere: built on the driver (from ``fit``'s keywords or from a job's command line), checked
there, and sent to every TF node inside the node spec. Three small frozen configs, in the spirit of
Ray Train's ``ScalingConfig``/``RunConfig``:

* :class:`ScalingConfig` -- how many TF nodes of which kind (strategy, workers, ps, GPUs);
* :class:`RunConfig`     -- where a run lives and how long it may take (model dir, export, attempts,
  timeouts, local scratch root);
* :class:`LoopConfig`    -- the training loop (batch size, epochs or steps, cadences).

A field's :class:`Kind` both parses its command-line text (argparse ``type=``) and checks a library
caller's value, so ``--epochs nan`` and ``fit(..., epochs=float("nan"))`` fail with the same words.
The jobs' command lines are derived from these fields with :func:`add_flags` and :func:`from_flags`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable


class Kind:
    """A value's type and range: callable as an argparse ``type``, and :meth:`check` for Python values."""

    def __init__(self, what: str, cast: Callable[[str], Any], ok: Callable[[Any], bool],
                 number: type = numbers.Real, optional: bool = False):
        self.what, self.cast, self.ok, self.number, self.optional = what, cast, ok, number, optional
        self.__name__ = what   # argparse names the type in some of its messages

    def __call__(self, text: str) -> Any:
        try:
            value = self.cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.what}, got {text!r}") from None
        if not self._in_range(value):
            raise argparse.ArgumentTypeError(f"must be {self.what}, got {text}")
        return value

    def check(self, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, self.number) or not self._in_range(value):
            raise ValueError(f"{name} must be {self.what}, not {value!r}")

    def _in_range(self, value: Any) -> bool:
        return math.isfinite(value) and self.ok(value)


class Choice(Kind):
    """One of a few strings (``--strategy``); with no choices, any string."""

    def __init__(self, *choices: str):
        self.choices = choices
        what = " or ".join(repr(c) for c in choices) if choices else "a string"
        super().__init__(what, str, lambda v: True, number=str)

    def _in_range(self, value: Any) -> bool:
        return value in self.choices if self.choices else isinstance(value, str)


POSITIVE_INT = Kind("a positive integer", int, lambda v: v >= 1, numbers.Integral)
# ``--steps``: 0 means "derive from --epochs"; a negative count is a typo, not a request.
NON_NEGATIVE_INT = Kind("a non-negative integer", int, lambda v: v >= 0, numbers.Integral)
# ``--epochs``, ``--learning-rate``: finite and above zero (``nan`` and ``inf`` parse as floats).
POSITIVE_FLOAT = Kind("a positive finite number", float, lambda v: v > 0)
NON_NEGATIVE_FLOAT = Kind("a non-negative finite number", float, lambda v: v >= 0)
FRACTION = Kind("between 0 and 1", float, lambda v: 0 <= v <= 1)
DROPOUT_RATE = Kind("in [0, 1)", float, lambda v: 0 <= v < 1)
class Switch(Kind):
    """An on/off option: a flag without a value on the command line."""

    def __init__(self):
        super().__init__("True or False", bool, lambda v: True, number=bool)

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, not {value!r}")


SWITCH = Switch()


class ExportVersion(Kind):
    """How an export is published: "" (one replaceable export) or "auto" (the next numbered version)."""

    def __init__(self):
        super().__init__("'auto' (the next numbered version) or empty", str, lambda v: v in ("", "auto"), number=str)

    def _in_range(self, value: Any) -> bool:
        return value in ("", "auto")


EXPORT_VERSION = ExportVersion()
STRATEGY = Choice("mwms", "ps")
GPUS = Kind("None or >= 0", int, lambda v: v >= 0, numbers.Integral, optional=True)
TEXT = Choice()   # any string: a URI, a path or a name (checked where it is used)


def param(default: Any, kind: Kind, help: str, flag: str | None = None) -> Any:
    """A config field: ``flag`` is its command-line spelling (None: library-only)."""
    return field(default=default, metadata={"kind": kind, "help": help, "flag": flag})


class _Checked:
    """Frozen dataclass mixin: every field is checked by its kind when the config is built."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            f.metadata["kind"].check(f.name, getattr(self, f.name))


@dataclass(frozen=True)
class ScalingConfig(_Checked):
    """How many TF nodes, of which kind. One Spark executor (one task slot) per node."""
    strategy: str = param("mwms", STRATEGY, "mwms (MultiWorkerMirrored) or ps (ParameterServer)", "--strategy")
    num_workers: int = param(2, POSITIVE_INT, "TF workers; for mwms the chief is one of them", "--workers")
    num_ps: int = param(1, NON_NEGATIVE_INT, "parameter servers (ps strategy)", "--ps")
    num_gpus: int | None = param(None, GPUS, "GPUs per node; None lets TFoS take 1 if the executor has any")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy == "ps" and self.num_ps < 1:
            raise ValueError(f"the ps strategy needs num_ps >= 1, not {self.num_ps}")

    @property
    def num_nodes(self) -> int:
        """Spark executors needed: one TF node each (ps adds a chief and the ps tasks)."""
        return self.num_workers if self.strategy == "mwms" else 1 + self.num_ps + self.num_workers

    @property
    def replicas_per_step(self) -> int:
        """Batches one training step consumes: one per worker under mwms, one under ps."""
        return self.num_workers if self.strategy == "mwms" else 1


@dataclass(frozen=True)
class RunConfig(_Checked):
    """Where a run keeps its state and how long its parts may take."""
    model_dir: str = param("", TEXT, "storage URI for checkpoints and TensorBoard events (resumed if present)")
    export_uri: str = param("", TEXT, "storage URI the chief publishes the model to")
    export_version: str = param("", EXPORT_VERSION, "'auto': publish the export as <export>/<next number>/ "
                                                    "(TF Serving's layout, write-once)", "--version")
    overwrite_export: bool = param(False, SWITCH, "replace an existing unversioned export of the same job",
                                   "--overwrite")
    max_attempts: int = param(2, POSITIVE_INT, "TF clusters started in all (an executor loss restarts one)",
                              "--max-attempts")
    start_timeout_s: float = param(300.0, POSITIVE_FLOAT, "for every node to reserve its port and start its "
                                                            "TF process")
    orphan_timeout_s: float = param(30.0, POSITIVE_FLOAT, "a node exits if the driver is unreachable this long")
    # The chief reports every log_every steps: keep that well below stall_timeout_s.
    stall_timeout_s: float = param(600.0, POSITIVE_FLOAT, "training without a progress report this long "
                                                          "loses the attempt")
    finish_timeout_s: float = param(1800.0, POSITIVE_FLOAT, "for the chief's evaluation and export after the "
                                                            "last step")
    allow_no_new_steps: bool = param(False, SWITCH, "export even when the checkpoint in the model dir is "
                                                    "already at the last step (nothing new trained)",
                                     "--allow-no-new-steps")
    # "": the user's private root on each node, $TMPDIR/tfos-<uid> (tfos_jobs.localdirs); a given root is
    # checked the same way. A node's scratch is removed when the node ends.
    local_root: str = param("", TEXT, "node-local scratch: staged data, checkpoints, events "
                                      "(default: a private per-user directory under $TMPDIR)")
    run_id: str = param("", TEXT, "names the run's scratch directories and Spark job groups (default: random)")


@dataclass(frozen=True)
class LoopConfig(_Checked):
    """The training loop: how much data per step, how many steps, how often to report and save."""
    batch_size: int = param(256, POSITIVE_INT, "examples per worker per step", "--batch-size")
    epochs: float = param(1.0, POSITIVE_FLOAT, "passes over the training data", "--epochs")
    steps: int = param(0, NON_NEGATIVE_INT, "total steps (default: from --epochs)", "--steps")
    checkpoint_every: int = param(200, POSITIVE_INT, "steps between checkpoints", "--checkpoint-every")
    log_every: int = param(50, POSITIVE_INT, "steps between progress reports", "--log-every")
    steps_per_closure: int = param(10, POSITIVE_INT, "ps: steps in one closure scheduled on a worker")
    validate_every: int = param(0, NON_NEGATIVE_INT, "steps between checks of the task's validation loss; the "
                                "weights of the best check are exported (0: no checks, the last weights)",
                                "--validate-every")

    def total_steps(self, num_rows: int, scaling: ScalingConfig) -> int:
        """``steps``, else ``epochs`` passes over ``num_rows``: the one place rows-per-step is computed."""
        return self.steps or max(1, int(num_rows * self.epochs // (self.batch_size * scaling.replicas_per_step)))


_PARTS = {"scaling": ScalingConfig, "run": RunConfig, "loop": LoopConfig}


class TrainConfig:
    """The three configs of one training run; built from ``fit``'s flat keywords or from its parts.

    ``TrainConfig(num_workers=4, epochs=2)`` routes each keyword to the config that defines it and
    rejects unknown ones, so ``fit(sc, task, source, **options)`` keeps its flat keywords."""

    __slots__ = ("scaling", "run", "loop")

    def __init__(self, scaling: ScalingConfig | None = None, run: RunConfig | None = None,
                 loop: LoopConfig | None = None, **options: Any):
        parts = {"scaling": scaling or ScalingConfig(), "run": run or RunConfig(), "loop": loop or LoopConfig()}
        owners = {f.name: name for name, cls in _PARTS.items() for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(owners))
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}; known: {sorted(owners)}")
        for name in parts:
            mine = {k: v for k, v in options.items() if owners[k] == name}
            if mine:
                parts[name] = dataclasses.replace(parts[name], **mine)
        for name, value in parts.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"TrainConfig is immutable; use .replace({name}=...)")

    def __reduce__(self):
        return (TrainConfig, (self.scaling, self.run, self.loop))

    def __repr__(self) -> str:
        return f"TrainConfig({self.scaling!r}, {self.run!r}, {self.loop!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and all(getattr(self, p) == getattr(other, p) for p in _PARTS)

    def replace(self, **options: Any) -> "TrainConfig":
        return TrainConfig(self.scaling, self.run, self.loop, **options)

    def validate(self) -> "TrainConfig":
        """A built config is valid (every field was checked when its part was built); kept for callers."""
        return self

    @property
    def num_nodes(self) -> int:
        return self.scaling.num_nodes

    def as_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _PARTS}


# ------------------------------------------------------------------------------ command lines


def add_flags(parser: argparse.ArgumentParser, config_cls: type, **defaults: Any) -> None:
    """Add one flag per field of ``config_cls`` that has a command-line spelling.

    ``defaults`` overrides a field's default for this command (a job trains with its own batch size)."""
    for f in dataclasses.fields(config_cls):
        flag = f.metadata["flag"]
        if flag is None:
            continue
        kind = f.metadata["kind"]
        default = defaults.get(f.name, f.default)
        options = {"default": default, "help": f"{f.metadata['help']} (default: %(default)s)", "dest": f.name,
                   "metavar": flag.lstrip("-").upper().replace("-", "_")}
        if isinstance(kind, Switch):
            options = {"default": default, "help": f.metadata["help"], "dest": f.name, "action": "store_true"}
        elif isinstance(kind, Choice):
            options["choices"] = kind.choices
        else:
            options["type"] = kind
        parser.add_argument(flag, **options)


def from_flags(config_cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The config of ``config_cls`` from parsed flags (fields without a flag keep their defaults,
    unless given in ``fixed``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
              if f.metadata["flag"] is not None}
    return config_cls(**values, **fixed)
