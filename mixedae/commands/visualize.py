"""Sub-commands (being written)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this group's parsers."""
