"""The ``mixedae`` command: parses arguments and wires the libraries together.

Each sub-command lives in ``mixedae/commands/<group>.py`` as a ``register(subparsers)`` function
that adds its parser and sets ``func``; this module only dispatches and turns user mistakes
(:class:`~mixedae.errors.UserError`, ``ValueError``) into one line on stderr and exit status 2; so
are the filesystem's refusals (a full disk, a read-only or forbidden folder, a file in the way of a
folder), which the user fixes outside mixedae. Set ``MIXEDAE_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Optional, Sequence

from . import __version__
from .commands import evaluate, pretrain, shard, study, visualize
from .errors import UserError
from .progress import set_quiet

COMMAND_GROUPS = (pretrain, evaluate, visualize, study, shard)
ELSEWHERE = "or write somewhere else (--output-dir / --out)"
FILESYSTEM_HINTS = {
    errno.ENOSPC: f"free some space {ELSEWHERE}", errno.EDQUOT: f"free some space {ELSEWHERE}",
    errno.EFBIG: f"free some space {ELSEWHERE}", errno.EROFS: "write to a writable folder (--output-dir / --out)",
    errno.EACCES: f"make it writable {ELSEWHERE}", errno.EPERM: f"make it writable {ELSEWHERE}",
    errno.EEXIST: f"a file is in the way of a folder: remove it {ELSEWHERE}",
    errno.ENOTDIR: f"part of the path is a file, not a folder: {ELSEWHERE.removeprefix('or ')}",
}


def one_line(error: BaseException) -> str:
    """The error's message on one line; for an error re-raised from a DataLoader worker, the original message
    (PyTorch prefixes it with the worker's traceback)."""
    text = str(error)
    if "\nOriginal Traceback" in text:  # last line: "<module>.<ErrorType>: <message>"
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split()) or type(error).__name__


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (and exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mixedae", description="MixedAE / MAE pre-training and evaluation for ViTs.")
    parser.add_argument("--version", action="version", version=f"mixedae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for group in COMMAND_GROUPS:
        group.register(sub)
    for command in sub.choices.values():  # every command, present and future, in one place
        command.add_argument("--quiet", action="store_true",
                             help="no progress bars or status lines (results are still printed); "
                                  "the same as log.progress=false / progress=false")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse, letting ``key=value`` overrides stand anywhere among the options."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    unknown = [a for a in rest if a not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    set_quiet(args.quiet)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError) as e:
        if os.environ.get("MIXEDAE_DEBUG"):
            raise
        print(f"mixedae {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if os.environ.get("MIXEDAE_DEBUG") or e.errno not in FILESYSTEM_HINTS:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"mixedae {args.command}: error: {e.strerror}{where}; {FILESYSTEM_HINTS[e.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mixedae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
