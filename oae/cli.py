"""The `oae` command line: one subcommand per concept, each defined in its own module.

Each module named in SUBCOMMANDS exposes `register(subparsers) -> None`, which adds its
parser and sets `func` (called with the parsed args, returns an exit code). Errors that a
user can fix are raised as `oae.errors.UsageError` and printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from oae import __version__
from oae.errors import OaeError

# Subcommand modules, in the order `oae --help` lists them.
SUBCOMMANDS: list[str] = [
    "oae.demo",
    "oae.bench.cli",
    "oae.runtime.cli",
    "oae.epoch.cli",
    "oae.testbed.cli",
    "oae.capture",
    "oae.decode",
    "oae.wireshark.cli",
    "oae.epoch.converge",
    "oae.epoch.experiment",
]


# Commands that start a long-running process, and the module that defines each: they
# start without importing every other command's module (a testbed starts dozens of
# `oae node` processes at once; the other modules would double their start-up time).
DAEMONS: dict[str, str] = {"node": "oae.runtime.cli"}


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oae",
        description=(
            "Open Atomic Ethernet emulator: bilateral, exactly-once link transfers (AIT) and "
            "bilateral epoch convergence on raw Ethernet frames, on namespace testbeds or "
            "real NICs. See docs/ for the protocol and each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"oae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS if modules is None else modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    daemon = DAEMONS.get(words[0]) if words else None
    parser = build_parser([daemon] if daemon else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OaeError as exc:
        print(f"oae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
