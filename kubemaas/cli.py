"""The one `kubemaas` command.

Each subcommand belongs to the package that implements it and parses its own flags, so the
operator image never imports torch and `kubemaas serve --help` never imports kopf. This module
only dispatches.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple


class Subcommand(NamedTuple):
    module: str
    summary: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "serve": Subcommand("kubemaas_server.cli", "serve a model repository over the Open Inference Protocol"),
    "operator": Subcommand("kubemaas_operator.cli", "run the kopf operator against $KUBECONFIG"),
    "train": Subcommand("kubemaas_trainer.launcher", "in-pod launcher: torchrun around a user command"),
    "cluster": Subcommand("kubemaas_cluster.cli", "local control plane: build|up|down|status"),
    "demo": Subcommand("kubemaas.demo", "train, deploy and query a model end to end"),
}


def usage() -> str:
    lines = ["usage: kubemaas <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {sub.summary}" for name, sub in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from kubemaas import __version__

        print(__version__)
        return 0
    sub = SUBCOMMANDS.get(args[0])
    if sub is None:
        print(f"kubemaas: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    entry: Callable[[list[str]], int] = importlib.import_module(sub.module).main
    return entry(args[1:])


if __name__ == "__main__":
    sys.exit(main())
