"""``tfos-registry``: look at and move the versions of models kept in a registry on storage.

    tfos-registry list REGISTRY                    the models under REGISTRY, their aliases and latest version
    tfos-registry show MODEL [--history]           versions (state, metrics, lineage), aliases, the log
    tfos-registry promote MODEL VERSION [--alias champion] [--reason TEXT]
    tfos-registry rollback MODEL [--alias champion] [--reason TEXT]
    tfos-registry retain MODEL --keep-last N [--apply]

MODEL is a versioned export URI (``<registry>/<name>``: ``--export`` of ``train --version auto``);
VERSION a number, an alias or ``latest``. Every command prints one JSON document; a refused change is
one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from tfos_jobs.cli import JobParser, positive_int, run_command
from tfos_jobs.registry.models import CHAMPION, ModelRegistry, RegistryError, list_models

PROG = "tfos-registry"


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=JobParser)
    s = sub.add_parser("list", help="the registered models under a registry URI")
    s.add_argument("registry")
    s = sub.add_parser("show", help="one model's versions, aliases and (with --history) its log")
    s.add_argument("model")
    s.add_argument("--history", action="store_true", help="every event, oldest first")
    s = sub.add_parser("promote", help="point an alias at a version")
    s.add_argument("model")
    s.add_argument("version", help="a version number, an alias, or 'latest'")
    s.add_argument("--alias", default=CHAMPION, help="default: %(default)s")
    s.add_argument("--reason", default="", help="recorded in the log")
    s = sub.add_parser("rollback", help="point an alias back at the version before its last promotion")
    s.add_argument("model")
    s.add_argument("--alias", default=CHAMPION, help="default: %(default)s")
    s.add_argument("--reason", default="", help="recorded in the log")
    s = sub.add_parser("retain", help="delete old versions: all but the last N, the aliased ones and their "
                                      "rollback targets (a dry run without --apply)")
    s.add_argument("model")
    s.add_argument("--keep-last", type=positive_int, required=True)
    s.add_argument("--apply", action="store_true", help="delete them (default: only say which)")
    return p


def run(args: argparse.Namespace) -> dict:
    if args.command == "list":
        models = {}
        for uri in list_models(args.registry):
            state = ModelRegistry(uri).state()
            models[uri.rsplit("/", 1)[-1]] = {"uri": uri, "aliases": state.current_aliases(),
                                              "latest": (state.ready() or [None])[-1], "ready": len(state.ready())}
        return {"registry": args.registry, "models": models}
    registry = ModelRegistry(args.model)
    if not registry.exists():
        raise RegistryError(f"{args.model} is not a registered model (no {args.model}/_registry): publish a "
                            "version with `train --export URI --version auto` first")
    if args.command == "show":
        shown = {"model": registry.uri, **registry.state().to_json()}
        if args.history:
            shown["history"] = registry.history()
        return shown
    if args.command == "promote":
        return registry.promote(args.version, args.alias, reason=args.reason)
    if args.command == "rollback":
        return registry.rollback(args.alias, reason=args.reason)
    if args.apply:
        return {"model": registry.uri, "deleted": registry.retain(args.keep_last, reason="tfos-registry retain")}
    return {"model": registry.uri, "would_delete": registry.retention(args.keep_last), "apply": False}


def show(args: argparse.Namespace) -> int:
    print(json.dumps(run(args), indent=1, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_command(PROG, parser, {name: show for name in ("list", "show", "promote", "rollback", "retain")}, argv)


if __name__ == "__main__":
    sys.exit(main())
