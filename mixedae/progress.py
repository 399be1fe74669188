"""Progress display: a tqdm bar in a terminal, a periodic one-line status in a log file, nothing when quiet.

Every loop that shows progress (pre-training epochs, feature extraction, probe and fine-tune epochs,
sliding-window evaluation, decoding images into memory, writing datasets) goes through :func:`progress`:

* stderr is a terminal → a tqdm bar, as before;
* stderr is a file or a pipe (``mixedae knn ... 2> log``, a cluster's job log) → :class:`StatusLines`: one
  whole line (tqdm's own meter text: count, percent, elapsed, ETA, rate, postfix) when the loop starts,
  then at most every ``MIXEDAE_PROGRESS_INTERVAL`` seconds (default 30), and when it ends — never a
  carriage return, so a log holds a few readable lines instead of thousands of redrawn frames;
* disabled (``log.progress=false`` / ``progress=false`` in a config, or ``--quiet`` on any command, which
  calls :func:`set_quiet`) → nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

from tqdm import tqdm

DEFAULT_INTERVAL_S = 30.0
_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """Silence every progress display of this process (the commands' ``--quiet``)."""
    global _quiet
    _quiet = quiet


def interval_s() -> float:
    """Seconds between two status lines when stderr is not a terminal (``MIXEDAE_PROGRESS_INTERVAL``)."""
    value = os.environ.get("MIXEDAE_PROGRESS_INTERVAL", "")
    try:
        return float(value) if value else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"MIXEDAE_PROGRESS_INTERVAL={value!r} is not a number of seconds (e.g. 30)") from None


class StatusLines:
    """The part of tqdm's interface the loops use (iterate, ``update``, ``set_postfix``, ``close``, ``with``),
    printing a full line on ``file`` at the start, at most every ``interval`` seconds, and at the end.

    ``clock`` is injectable for tests (``time.monotonic`` by default).
    """

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 initial: int = 0, file=None, interval: Optional[float] = None, clock=time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, initial
        self.file = file if file is not None else sys.stderr
        self.interval = interval_s() if interval is None else interval
        self.clock, self.postfix, self.closed = clock, "", False
        self.start = self.last = clock()
        self.initial = initial
        self._print()

    def line(self) -> str:
        """The status text, e.g. ``features:  24% 120/500 [00:03<00:10, 35.29it/s, loss=1.2]``."""
        elapsed = self.clock() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else None
        return tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, rate=rate,
                                 postfix=self.postfix or None, initial=self.initial, ncols=0)

    def _print(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval:
            self._print()

    def set_postfix(self, ordered_dict: Optional[dict] = None, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "StatusLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
             enabled: bool = True, initial: int = 0, leave: bool = True):
    """A progress display over ``iterable`` (or a manual one with ``total`` and ``update``): a tqdm bar if
    stderr is a terminal, :class:`StatusLines` otherwise, a silent pass-through when not ``enabled`` or
    quiet. All three support iteration, ``update``, ``set_postfix``, ``close`` and ``with``."""
    if not enabled or _quiet:
        return tqdm(iterable, total=total, initial=initial, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, dynamic_ncols=True,
                    file=sys.stderr)
    return StatusLines(iterable, total=total, desc=desc, initial=initial)
