"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """Trailing ``section.key=value`` config overrides."""
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=10 data.image_size=32"
    )
