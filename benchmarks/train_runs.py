"""How many Ray Train runs a pytest session starts: each `fit()` of a Ray Train trainer, in the test process,
in the `raylm` commands the tests start, and in Ray's worker processes (Tune trials), is counted.

    python benchmarks/train_runs.py [PYTEST ARGS...]     # e.g. -q -m "not slow", or tests/test_tune_e2e.py

It puts a `.pth` file in this interpreter's site-packages for the length of the run, so every Python process of
the environment (the test's `raylm` commands whatever their PYTHONPATH, Ray's workers, `ray start` nodes) loads a
hook that wraps Ray Train's `DataParallelTrainer.fit` when, and only when, the process imports it and
RAYLM_TRAIN_RUNS_LOG is set (this script sets it for pytest; other users of the environment see no change); each
call appends one line to that log. Prints the total and the count per test file (the test that was running
when the process started: a Tune trial runs in a Ray worker started earlier, so it is named by the first
test of the session's Ray instance, or "-").
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

MODULE = "_raylm_count_fits"

HOOK = """
import importlib.abc, importlib.util, os, sys

_LOG = os.environ.get("RAYLM_TRAIN_RUNS_LOG")
_NAME = "ray.train.v2.api.data_parallel_trainer"


class _CountFits(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _NAME:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            fit = module.DataParallelTrainer.fit

            def counted(self, *args, **kwargs):
                test = os.environ.get("PYTEST_CURRENT_TEST", "-").split(" ")[0]
                with open(_LOG, "a") as f:
                    f.write(f"{os.getpid()}\\t{test}\\n")
                return fit(self, *args, **kwargs)

            module.DataParallelTrainer.fit = counted

        spec.loader.exec_module = exec_module
        return spec


if _LOG:
    sys.meta_path.insert(0, _CountFits())
"""


def main(argv: list[str]) -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    hook, pth = site / f"{MODULE}.py", site / f"{MODULE}.pth"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "fits.log"
        log.touch()
        hook.write_text(HOOK)
        pth.write_text(f"import {MODULE}\n")
        try:
            rc = subprocess.call([sys.executable, "-m", "pytest", *argv], env={**os.environ, "RAYLM_TRAIN_RUNS_LOG": str(log)})
        finally:
            pth.unlink()
            hook.unlink()
        lines = log.read_text().splitlines()
    per_file = collections.Counter(line.split("\t")[1].split("::")[0] for line in lines)
    print(f"\nRay Train runs (fit calls): {len(lines)}")
    for name, n in per_file.most_common():
        print(f"  {n:4d}  {name}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
