"""Progress of long work on stderr: a tqdm bar on a terminal, a short line every ~10 s otherwise.

One helper for the trainer's bars (:mod:`refimpl.train`) and the audit's phases
(:mod:`refimpl.audit`). The ``progress`` argument of the public functions means:

- ``False``: nothing is written (the command line's ``-q``);
- ``None`` (default) or ``True``: a tqdm bar when stderr is a terminal; otherwise (a pipe,
  a file, a CI log) a line such as ``refimpl: stage 2 4096/20000 steps, 31 s`` every
  ``interval`` seconds while the work runs. Work that ends before the first interval
  writes nothing, so short runs keep stderr empty.

The interval is 10 s; the environment variable ``REFIMPL_PROGRESS_INTERVAL`` (seconds, a
positive number) or the ``interval`` keyword overrides it. The lines come from a daemon
thread that only reads the counters, so they appear also while one long call (a max-margin
solve, a replay) runs without reporting steps.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time

__all__ = ["Progress", "INTERVAL_ENV", "DEFAULT_INTERVAL", "progress_interval"]

INTERVAL_ENV = "REFIMPL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0   # seconds between two progress lines on a non-terminal stderr


def progress_interval(interval=None):
    """Seconds between progress lines: ``interval`` if given, else ``$REFIMPL_PROGRESS_INTERVAL``
    if it is a positive number, else 10."""
    if interval is not None:
        return float(interval)
    try:
        value = float(os.environ.get(INTERVAL_ENV, ""))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value > 0 else DEFAULT_INTERVAL


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):     # no isatty, or a closed stream
        return False


class Progress:
    """Progress of ``total`` units of work (0 or None: a phase without a count).

    Parameters
    ----------
    total : int or None
        Number of units (steps, claims); None or 0 for work without a count.
    desc : str
        What runs, e.g. ``"stage 1"``; :meth:`set_description` changes it.
    progress : bool or None
        False: silent. None or True: a tqdm bar if ``stream`` is a terminal, otherwise a
        line every ``interval`` seconds.
    unit : str
        Name of a unit in the bar and the lines.
    stream : file or None
        Where to write (default: ``sys.stderr`` at construction).
    interval : float or None
        Seconds between lines on a non-terminal (default :func:`progress_interval`).

    Use as a context manager or call :meth:`close`; :meth:`update` takes the absolute
    count, :meth:`advance` an increment.
    """

    def __init__(self, total, desc, progress=None, *, unit="step", stream=None, interval=None,
                 position=None):
        self.stream = sys.stderr if stream is None else stream
        self.total = int(total or 0)
        self.desc, self.unit, self.n = desc, unit, 0
        self.bar = None
        self._thread = None
        self._stop = threading.Event()
        self._start = time.monotonic()
        if progress is not None and not progress:
            return
        if _isatty(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=self.total or None, desc=desc, unit=unit, leave=False,
                            mininterval=0.2, file=self.stream, position=position)
        else:
            self._interval = progress_interval(interval)
            self._thread = threading.Thread(target=self._tick, name="refimpl-progress", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- lines
    def line(self):
        """The progress line as it would be written now (without the newline)."""
        elapsed = time.monotonic() - self._start
        count = ""
        if self.total:
            count = f" {self.n}/{self.total} {self.unit}s ({100.0 * self.n / self.total:.0f}%)"
        return f"refimpl: {self.desc}{count}, {elapsed:.0f} s"

    def _tick(self):
        while not self._stop.wait(self._interval):
            try:
                self.stream.write(self.line() + "\n")
                self.stream.flush()
            except (OSError, ValueError):     # a closed pipe or stream: stop reporting
                return

    # ---------------------------------------------------------------- updates
    def update(self, n):
        """Set the count of finished units to ``n`` (ignored unless it grows)."""
        if n > self.n:
            if self.bar is not None:
                self.bar.update(n - self.n)
            self.n = n

    def advance(self, k=1):
        """Add ``k`` finished units."""
        self.update(self.n + k)

    def set_description(self, desc):
        """Change what the bar or the next line says is running."""
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc)

    def close(self):
        """Remove the bar or stop the lines (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
