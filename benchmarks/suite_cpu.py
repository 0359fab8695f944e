"""Where a pytest session's CPU goes: each test's wall time and the whole machine's busy CPU-seconds while it ran
(setup and teardown included), from /proc/stat at its start and end, so that Ray's processes, the `ray start`
nodes and the subprocesses a test starts count too. Linux only. Run it on an otherwise idle machine: what else
runs is counted as well.

    python benchmarks/suite_cpu.py [--top N] [PYTEST ARGS...]    # e.g. -q -m "slow and not own_ray"

Prints the N costliest tests, then the totals: wall seconds, busy CPU-seconds, and the machine's mean use of its
cores (busy CPU-seconds over wall seconds times the core count). A suite of C CPU-seconds needs at least C / cores
seconds of wall time however its tests are ordered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODULE = "_raylm_suite_cpu"

PLUGIN = """
import os, time

_OUT = open(os.environ["RAYLM_SUITE_CPU_LOG"], "a")
_TICK = os.sysconf("SC_CLK_TCK")
_START = {}


def _busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / _TICK  # all but idle and iowait


def pytest_runtest_logstart(nodeid, location):
    _START[nodeid] = (time.time(), _busy())


def pytest_runtest_logfinish(nodeid, location):
    t, b = _START.pop(nodeid)
    _OUT.write(f"{time.time() - t:.2f}\\t{_busy() - b:.2f}\\t{nodeid}\\n")
    _OUT.flush()
"""


def main(argv: list[str]) -> int:
    top = 15
    if argv[:1] == ["--top"]:
        top, argv = int(argv[1]), argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{MODULE}.py").write_text(PLUGIN)
        log = Path(tmp) / "tests.tsv"
        log.touch()
        path = os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "RAYLM_SUITE_CPU_LOG": str(log)}
        rc = subprocess.call([sys.executable, "-m", "pytest", "-p", MODULE, *argv], env=env)
        rows = [line.split("\t") for line in log.read_text().splitlines()]
    rows = sorted(((float(w), float(c), name) for w, c, name in rows), key=lambda r: -r[1])
    print(f"\n{'wall s':>8} {'CPU s':>8}  test (the {min(top, len(rows))} costliest in CPU)")
    for wall, cpu, name in rows[:top]:
        print(f"{wall:8.1f} {cpu:8.1f}  {name}")
    wall, cpu, cores = sum(r[0] for r in rows), sum(r[1] for r in rows), os.cpu_count() or 1
    use = cpu / wall / cores if wall else 0.0
    print(f"{len(rows)} tests: {wall:.1f} s of wall time, {cpu:.1f} busy CPU-seconds, {use:.0%} of {cores} cores")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
