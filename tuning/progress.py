"""A campaign's progress on the driver: one table of trials (state, searched values, step, last and best
metric) refreshed as results arrive, in place of Ray Tune's own console output (its config boxes and
result dumps). A live rich table on a terminal; elsewhere the table at most every `every_s` seconds and a
line as each trial ends."""

from __future__ import annotations

import math
import time

from ray import tune

from raylm.core.progress import cell, on_terminal
from raylm.tuning.config import Recipe
from raylm.tuning.results import OUTCOME


class TrialTable(tune.Callback):
    def __init__(self, cfg: Recipe, keys: list[str], every_s: float = 30.0, tty: bool | None = None):
        self.metric, self.sign, self.max_steps = cfg.tune.metric, (1 if cfg.tune.mode == "min" else -1), cfg.train.max_steps
        self.keys, self.every_s, self.tty = keys, every_s, tty
        self.rows: dict[str, dict] = {}  # trial id -> step, last and best metric
        self._live, self._last = None, -math.inf

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the experiment; the live display stays here
        return {**self.__dict__, "_live": None}

    def _row(self, trial) -> dict:
        return self.rows.setdefault(trial.trial_id, {"step": None, "last": None, "best": None})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        r, v = self._row(trial), result.get(self.metric)
        r["step"] = result.get("step", r["step"])
        if v is not None:
            r["last"] = v
            r["best"] = v if r["best"] is None else min(r["best"], v, key=lambda x: self.sign * x)
        self._show(trials)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._show(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        step = self._row(trial)["step"]
        self._ended(trials, trial, "done" if step is not None and step >= self.max_steps else "stopped by the scheduler")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trials, trial, "error")

    def on_experiment_end(self, trials, **info) -> None:  # the campaign's summary table follows
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _ended(self, trials, trial, how: str) -> None:
        r = self._row(trial)
        if not OUTCOME.interrupted:  # Tune ends the trials it stops on an interrupt too: those were cut short
            OUTCOME.ended.add(trial.trial_id)
        if not on_terminal(self.tty):
            print(f"[raylm tune] trial {trial.trial_id} {how} at step {r['step']}: {self.metric} {cell(r['last'])}", flush=True)
        self._show(trials)

    def table(self, trials):
        from rich.table import Table

        t = Table(title=f"raylm tune: {len(trials)} trial(s)", title_justify="left")
        for col in ("trial", "state", *self.keys, "step", self.metric, f"best {self.metric}"):
            t.add_column(col, justify="left" if col in ("trial", "state") else "right")
        best = min((r["best"] for r in self.rows.values() if r["best"] is not None), key=lambda x: self.sign * x, default=None)
        for tr in trials:
            r = self.rows.get(tr.trial_id, {})
            star = " *" if best is not None and r.get("best") == best else ""
            values = [cell(tr.config.get(k)) for k in self.keys] + [cell(r.get(k)) for k in ("step", "last", "best")]
            t.add_row(tr.trial_id + star, tr.status, *values)
        return t

    def _print(self, trials) -> None:
        from rich.console import Console

        Console(width=max(120, 20 * (len(self.keys) + 5))).print(self.table(trials))
        self._last = time.monotonic()

    def _show(self, trials) -> None:
        if on_terminal(self.tty):
            if self._live is None:
                from rich.live import Live as TableDisplay  # a table redrawn in place (core's Live is a status line)

                self._live = TableDisplay(self.table(trials), refresh_per_second=2, transient=True)
                self._live.start()
            self._live.update(self.table(trials))
        elif time.monotonic() - self._last >= self.every_s:
            self._print(trials)
