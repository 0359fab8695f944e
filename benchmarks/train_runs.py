"""How many Ray Train runs a pytest session starts: each `fit()` of a Ray Train trainer, in the test process,
in the `raylm` commands the tests start, and in Ray's worker processes (Tune trials), is counted.

    python benchmarks/train_runs.py [PYTEST ARGS...]     # e.g. -q -m "not slow", or tests/test_tune_e2e.py

It runs pytest with a `sitecustomize` on PYTHONPATH (every Python process started under it imports it, Ray's
workers included) that wraps Ray Train's `DataParallelTrainer.fit` when, and only when, a process imports it;
each call appends one line to a log. Prints the total and the count per test file (the test that was running
when the process started: a Tune trial runs in a Ray worker started earlier, so it is named by the first
test of the session's Ray instance, or "-").
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

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
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(HOOK)
        log = Path(tmp) / "fits.log"
        log.touch()
        env = {**os.environ, "RAYLM_TRAIN_RUNS_LOG": str(log), "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        rc = subprocess.call([sys.executable, "-m", "pytest", *argv], env=env)
        lines = log.read_text().splitlines()
    per_file = collections.Counter(line.split("\t")[1].split("::")[0] for line in lines)
    print(f"\nRay Train runs (fit calls): {len(lines)}")
    for name, n in per_file.most_common():
        print(f"  {n:4d}  {name}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
