"""Progress on stderr: bars on a terminal, one finished line per stage anywhere else.

A bar is only worth drawing where it can be redrawn.  Off a terminal (a log file, a CI job, a
pipe) tqdm's carriage returns pile up and a fast stage leaves nothing but its first frame, a bar
stuck at 0%; there ``--progress always`` prints one line per stage as it ends instead, with what
it did and how long it took.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MODES = ("auto", "always", "never")


class Progress:
    """Stages of a command, each reported as it runs (``mode``: ``--progress``).

    ``auto`` shows bars for long inputs on a terminal and nothing otherwise; ``always`` shows
    bars on a terminal and finished lines elsewhere; ``never`` shows nothing.
    """

    def __init__(self, mode: str, *, long_input: bool, stream: Any = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = mode == "always" or (mode == "auto" and long_input and tty)
        self.bars = self.enabled and tty

    @contextmanager
    def stage(self, desc: str, total: int, unit: str = "rows") -> Iterator[Callable[[int], None]]:
        """A stage of ``total`` units; the callable it yields is told each finished ``rows``.

        Several passes over the same units (a Newton fit reads the data once per step) are
        counted as passes: the bar restarts and the final line says how many there were.
        """
        if not self.enabled:
            yield _ignore
            return
        tick = _Stage(desc, total, unit, self.stream, bar=self.bars)
        try:
            yield tick
        except BaseException:
            tick.close(finished=False)
            raise
        tick.close()


def _ignore(rows: int) -> None:
    return None


class _Stage:
    def __init__(self, desc: str, total: int, unit: str, stream: Any, *, bar: bool) -> None:
        self.desc, self.total, self.unit, self.stream = desc, total, unit, stream
        self.done = 0
        self.passes = 1
        self.start = time.perf_counter()
        self.bar = None
        if bar:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is in the cli extra
                return
            self.bar = tqdm(total=total, unit=unit, desc=desc, file=stream, leave=False,
                            dynamic_ncols=True)

    def __call__(self, rows: int) -> None:
        if self.done >= self.total > 0:
            self.passes += 1
            self.done = 0
            if self.bar is not None:
                self.bar.reset(total=self.total)
                self.bar.set_description(f"{self.desc}, pass {self.passes}")
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)

    def close(self, *, finished: bool = True) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        if not finished:
            return
        seconds = time.perf_counter() - self.start
        passes = f" ({self.passes} passes)" if self.passes > 1 else ""
        self.stream.write(f"logitkit: {self.desc}: {self.total:,} {self.unit}{passes} in "
                          f"{seconds:.2f} s\n")
        self.stream.flush()
