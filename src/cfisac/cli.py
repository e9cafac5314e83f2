"""The ``cfisac`` command line. Each sub-command lives in ``cfisac.commands.<name>`` and exposes
``register(subparsers)`` (adds its parser and sets ``func``); they are discovered automatically."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands

__all__ = ["main"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (unknown option, non-numeric value, bad choice) are one line on stderr,
    ``cfisac <command>: error: ...``, and exit status 2 (argparse's default prints the whole usage first). The
    sub-command parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cfisac", description="Cooperative ISAC in cell-free MIMO systems")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # helpers (e.g. _checks), not sub-commands
            continue
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad input at the boundary: a clear message, no traceback
        print(f"cfisac {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the machine: disk full, permission denied, a file removed meanwhile
        where = f": {err.filename}" if err.filename else ""
        print(f"cfisac {args.command}: error: {err.strerror or err}{where} (files written before are intact; "
              "rerun to resume)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
