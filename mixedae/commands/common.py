"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse

DATA_HELP = ("synthetic | DIR | ARCHIVE.tar[.gz] | cifar10:ROOT (torchvision: cifar10, cifar100, mnist, fashionmnist, "
             "stl10, svhn) | shards:DIR (WebDataset tar shards, e.g. written by mixedae shard)")


def add_overrides(parser: argparse.ArgumentParser, example: str = "train.epochs=10 data.image_size=32") -> None:
    """Trailing ``section.key=value`` config overrides; ``example`` must parse into the command's config
    (tests/eval/test_help_examples.py checks every command's)."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")
