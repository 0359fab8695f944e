"""Live progress on the driver, the one way every stage shows it: on a terminal a rich status line (a bar
when the total is known) under the lines printed so far; elsewhere (CI, `make run | tee`, a Ray Jobs log)
plain lines, a status at most every `every_s` seconds (None: lines only), so a log stays readable. And `cell`:
how a value reads in the tables and summaries the commands print."""

from __future__ import annotations

import math
import os
import sys
import time

LOG_ENV = "RAYLM_LOG"  # `debug` (or --verbose): Ray's own log lines and console output come back


def verbose() -> bool:
    """Whether the user asked for Ray's own output (--verbose or RAYLM_LOG=debug)."""
    return os.environ.get(LOG_ENV, "").lower() == "debug"


def clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    s = int(max(seconds, 0))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def on_terminal(tty: bool | None = None) -> bool:
    """Whether progress goes to a terminal (live displays) or to a log (plain lines); `tty` overrides (tests)."""
    return sys.stdout.isatty() if tty is None else tty


def cell(value, spec: str | None = None) -> str:
    """A value as a table or summary cell: `-` for none, `spec` when given (`,` `.4f`), else a float to four
    significant digits and anything else as str."""
    if value is None:
        return "-"
    if spec is not None:
        return format(value, spec)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Live:
    """`status(text)` replaces the live line; `line(text)` prints a line that stays; `close()` ends it."""

    def __init__(self, prefix: str, total: float | None = None, every_s: float | None = 10.0, tty: bool | None = None):
        self.prefix, self.every_s = prefix, every_s
        self.tty = on_terminal(tty)
        self._last = -math.inf  # when the last plain status line was printed: the first shows at once
        self._pending = ""  # the newest status not yet printed (plain mode)
        self._bar = None
        if self.tty:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

            cols = [SpinnerColumn(), *([BarColumn()] if total else []), TextColumn("{task.description}")]
            self._bar = Progress(*cols, transient=True)
            self._task = self._bar.add_task(prefix, total=total)
            self._bar.start()

    def status(self, text: str, completed: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.prefix} {text}", completed=completed)
            return
        self._pending = text
        if self.every_s is not None and time.monotonic() - self._last >= self.every_s:
            self._flush()

    def line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(f"{self.prefix} {text}", soft_wrap=True, highlight=False)
        else:
            print(f"{self.prefix} {text}", flush=True)
            self._pending, self._last = "", time.monotonic()

    def _flush(self) -> None:
        if self._pending:
            print(f"{self.prefix} {self._pending}", flush=True)
        self._pending, self._last = "", time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
