"""``mixedae shard SRC --out DIR``: an image folder (or archive, or torchvision dataset) → WebDataset shards
(:func:`mixedae.data.shards.write_shards`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard",
        help="write WebDataset tar shards (+ index.json) from an image folder, for --data shards:DIR",
        description="Pack the train and val splits of an image folder (ImageFolder tree or unlabeled; with or "
        "without train/ + val/), an archive or a torchvision dataset (cifar10:ROOT) into uncompressed tar shards "
        "in the WebDataset layout (<split>/<index>.<ext> + .cls labels; the original image bytes), plus "
        "index.json. Deterministic. Read them in place with --data shards:DIR.",
    )
    p.add_argument("source", metavar="SRC", help="DIR | ARCHIVE.tar[.gz] | cifar10:ROOT (...)")
    p.add_argument("--out", required=True, help="output folder for <split>-NNNNNN.tar and index.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="hold-out seed for a folder without train/ + val/ (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.shards import write_shards

    out = Path(args.out)
    index = write_shards(args.source, out, args.shard_size, args.seed, progress=not args.quiet)
    for split, entry in index["splits"].items():
        print(f"{split}: {entry['count']} images in {len(entry['shards'])} shard(s)")
    print(f"shards: {out} ({len(index['classes'])} classes)  read them with --data shards:{out}")
    return 0
