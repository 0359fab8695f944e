"""Training progress on the driver: a line every `train.log_every` steps (step, loss, val loss, lr, tokens/s,
MFU, elapsed, ETA) and a live bar on a terminal. A driver thread reads the rows rank 0 already appends to
metrics.jsonl, so the workers do no more than before: no extra `ray.train.report`, which would wait on Ray
Train's 2 s controller poll."""

from __future__ import annotations

import json
import math
import threading
import time

import fsspec

from raylm.core.progress import Live, clock


class MetricsTail:
    """The complete rows appended to a metrics.jsonl (any fsspec URL) since the last poll. A file rewritten in
    between (a resume after a worker failure keeps the steps up to its checkpoint, then appends the redone ones)
    is read again from its start: it got shorter, or the last row read is no longer where it was (the resumed run
    may have appended past the old end before the next poll)."""

    def __init__(self, path: str):
        self.path, self.offset, self.last = path, 0, b""  # last: the last row read, with its newline
        self.fs, _ = fsspec.core.url_to_fs(path)

    def poll(self) -> list[dict]:
        try:
            size = self.fs.size(self.path)
        except FileNotFoundError:
            return []
        if size == self.offset:
            return []
        # from the last row read, which must still be there; None: the file got shorter
        data = self.fs.cat_file(self.path, start=self.offset - len(self.last), end=size) if size > self.offset else None
        if data is not None and data.startswith(self.last):
            data = data[len(self.last) :]
        else:  # rewritten: from the start
            self.offset, self.last, data = 0, b"", self.fs.cat_file(self.path, start=0, end=size)
        end = data.rfind(b"\n") + 1  # a row being written is read next time, whole
        if end:
            self.offset += end
            self.last = data[data.rfind(b"\n", 0, end - 1) + 1 : end]
        return [json.loads(ln) for ln in data[:end].decode().splitlines() if ln.strip()]


def progress_line(row: dict, max_steps: int, elapsed: float, eta: float | None) -> str:
    """One progress line, nanoGPT's figures and Ray's: where, how well, how fast, how long to go."""
    parts = [f"step {row['step']:,}/{max_steps:,}", f"loss {row['loss']:.4f}"]
    if row.get("val_loss") is not None:
        bpb = f" ({row['val_bpb']:.3f} bits/byte)" if row.get("val_bpb") is not None else ""
        parts.append(f"val {row['val_loss']:.4f}{bpb}")
    if row.get("tasks/core") is not None:  # train.eval.tasks: their aggregate
        parts.append(f"tasks CORE {row['tasks/core']:.3f}")
    parts += [f"lr {row['lr']:.2e}", f"{row['tokens_per_s']:,.0f} tok/s"]
    if row.get("mfu") is not None:
        parts.append(f"MFU {row['mfu']:.1%}")
    parts += [f"{clock(elapsed)} elapsed", f"ETA {clock(eta) if eta is not None else '?'}"]
    return " | ".join(parts)


class TrainProgress:
    """`with TrainProgress(metrics_path, max_steps, every, started): trainer.fit()`: prints the rows of steps
    finished after `started` (time.time()) as they arrive, every `every` steps, at eval steps and at the last."""

    def __init__(self, metrics: str, max_steps: int, every: int, started: float | None = None, poll_s: float = 1.0, tty: bool | None = None):
        self.tail, self.max_steps, self.every, self.poll_s = MetricsTail(metrics), max_steps, every, poll_s
        self.started = time.time() if started is None else started
        self.tty, self.first, self._stop = tty, None, threading.Event()
        self.newest = -math.inf  # the time of the newest row shown: a file read again shows only the rows after it
        self.lines = 0  # progress lines printed (tests, and the summary)

    def __enter__(self) -> TrainProgress:
        # plain output: the lines alone (a status between them would only repeat them)
        self.live = Live("[raylm train]", total=self.max_steps, every_s=None, tty=self.tty)
        self._thread = threading.Thread(target=self._loop, name="raylm-train-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._show(self.tail.poll())  # the rows written since the last poll
        self.live.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._show(self.tail.poll())

    def _show(self, rows: list[dict]) -> None:
        for r in rows:
            if r.get("time", 0) < self.started or r["time"] <= self.newest:  # an earlier invocation's (this one resumed), or shown
                continue
            self.newest = r["time"]
            if self.first is None:
                self.first = (r["step"], r["time"])
            done, spent = r["step"] - self.first[0], r["time"] - self.first[1]
            eta = (self.max_steps - r["step"]) * spent / done if done > 0 else None
            text = progress_line(r, self.max_steps, r["time"] - self.started, eta)
            if r["step"] % self.every == 0 or r["step"] == self.max_steps or r.get("val_loss") is not None:
                self.live.line(text)
                self.lines += 1
            else:
                self.live.status(text, completed=r["step"])
