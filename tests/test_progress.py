"""Progress on the driver (core/progress.py, training/progress.py): pure logic on real files, no Ray."""

import json
import time

from raylm.core.progress import Live, clock
from raylm.training.config import TrainConfig, log_interval
from raylm.training.progress import MetricsTail, TrainProgress, progress_line


def _row(step: int, t: float, **kw) -> dict:
    return {"step": step, "tokens": step * 100, "loss": 5.0 - step / 100, "lr": 1e-3, "tokens_per_s": 1000.0, "mfu": None, "time": t, **kw}


def test_clock():
    assert [clock(s) for s in (0, 59.9, 61, 3600, 3725)] == ["0:00", "0:59", "1:01", "1:00:00", "1:02:05"]


def test_log_interval_about_twenty_lines_unless_set():
    assert log_interval(TrainConfig(max_steps=280)) == 14
    assert log_interval(TrainConfig(max_steps=5)) == 1
    assert log_interval(TrainConfig(max_steps=280, log_every=7)) == 7


def test_tail_reads_whole_rows_once_and_rereads_a_rewritten_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(str(path))
    assert tail.poll() == []  # not there yet
    with path.open("w") as f:
        f.write(json.dumps(_row(1, 1.0)) + "\n" + json.dumps(_row(2, 2.0))[:10])  # the second row half written
    assert [r["step"] for r in tail.poll()] == [1]
    with path.open("a") as f:
        f.write(json.dumps(_row(2, 2.0))[10:] + "\n")
    assert [r["step"] for r in tail.poll()] == [2] and tail.poll() == []
    path.write_text(json.dumps(_row(1, 3.0)) + "\n")  # a resume rewrote it shorter
    assert [r["time"] for r in tail.poll()] == [3.0]


def test_tail_rereads_a_file_rewritten_and_grown_past_the_last_read_before_a_poll(tmp_path):
    """A worker failure's resume keeps the rows up to its checkpoint and appends the redone steps; on a fast run the
    file is longer than before by the next poll, and the old offset lands inside a row."""
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(str(path))
    path.write_text("".join(json.dumps(_row(s, float(s))) + "\n" for s in range(1, 5)))
    assert [r["step"] for r in tail.poll()] == [1, 2, 3, 4]
    path.write_text("".join(json.dumps(_row(s, 10.0 + s, val_loss=4.0)) + "\n" for s in range(1, 8)))  # steps 1-7 anew
    assert [r["time"] for r in tail.poll()] == [10.0 + s for s in range(1, 8)]


def test_tail_goes_on_after_a_file_of_one_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(str(path))
    path.write_text(json.dumps(_row(1, 1.0)) + "\n")
    assert [r["step"] for r in tail.poll()] == [1]
    with path.open("a") as f:
        f.write(json.dumps(_row(2, 2.0)) + "\n")
    assert [r["step"] for r in tail.poll()] == [2]


def test_train_progress_shows_the_redone_steps_of_a_rewritten_file_and_no_row_twice(tmp_path, capsys):
    path, now = tmp_path / "metrics.jsonl", time.time()
    with TrainProgress(str(path), max_steps=6, every=1, started=now, poll_s=0.01, tty=False):
        path.write_text("".join(json.dumps(_row(s, now + s)) + "\n" for s in range(1, 5)))
        time.sleep(0.1)
        # a worker failed after step 4: steps 1-2 kept (checkpoint at 2), 3-6 redone, all before the next poll
        kept = "".join(json.dumps(_row(s, now + s)) + "\n" for s in range(1, 3))
        path.write_text(kept + "".join(json.dumps(_row(s, now + 10 + s)) + "\n" for s in range(3, 7)))
    steps = [int(ln.split(" | ")[0].split()[-1].split("/")[0]) for ln in capsys.readouterr().out.splitlines()]
    assert steps == [1, 2, 3, 4, 3, 4, 5, 6]


def test_progress_line_fields():
    line = progress_line(_row(56, 0.0, val_loss=4.3, val_bpb=2.5, mfu=0.412), 280, 42.0, 168.0)
    assert line == "step 56/280 | loss 4.4400 | val 4.3000 (2.500 bits/byte) | lr 1.00e-03 | 1,000 tok/s | MFU 41.2% | 0:42 elapsed | ETA 2:48"
    assert progress_line(_row(1, 0.0), 10, 1.0, None).endswith("ETA ?")


def test_progress_line_shows_the_task_aggregate_at_an_eval_step():
    line = progress_line(_row(56, 0.0, val_loss=4.3, **{"tasks/core": 0.4321, "tasks/mc/acc": 0.7}), 280, 42.0, 168.0)
    assert "| val 4.3000 | tasks CORE 0.432 | lr" in line


def test_train_progress_prints_every_n_steps_eval_steps_and_the_last(tmp_path, capsys):
    path, now = tmp_path / "metrics.jsonl", time.time()
    path.write_text(json.dumps(_row(1, now - 100)) + "\n")  # an earlier invocation's step: not shown
    with TrainProgress(str(path), max_steps=9, every=4, started=now, poll_s=0.01, tty=False) as p:
        with path.open("a") as f:
            for s in range(2, 10):
                f.write(json.dumps(_row(s, now + s, **({"val_loss": 4.0} if s == 3 else {}))) + "\n")
                f.flush()
                time.sleep(0.02)
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(" | ")[0].removeprefix("[raylm train] ") for ln in out] == ["step 3/9", "step 4/9", "step 8/9", "step 9/9"]
    assert p.lines == 4 and out[1].endswith("0:04 elapsed | ETA 0:05")  # 1 s a step since step 2 was seen


def test_live_plain_mode_throttles_status_but_not_lines(capsys):
    live = Live("[x]", every_s=3600, tty=False)
    live.status("first")  # the first status shows at once
    live.status("second")  # then at most one an hour
    live.line("kept")
    live.close()
    assert capsys.readouterr().out.splitlines() == ["[x] first", "[x] kept"]


def test_trial_table_rows_best_and_plain_lines(capsys):
    from types import SimpleNamespace

    from raylm.tuning.config import TuneConfig
    from raylm.tuning.progress import TrialTable

    cfg = SimpleNamespace(train=TrainConfig(max_steps=20), tune=TuneConfig())  # a recipe as tuning sees one (tuning.config.Recipe)
    table = TrialTable(cfg, ["train.optim.lr"], every_s=3600, tty=False)
    a = SimpleNamespace(trial_id="t0", status="RUNNING", config={"train.optim.lr": 1e-3})
    b = SimpleNamespace(trial_id="t1", status="RUNNING", config={"train.optim.lr": 3e-3})
    table.on_trial_result(0, [a, b], a, {"step": 5, "val_loss": 6.0})  # the first shows at once
    table.on_trial_result(0, [a, b], b, {"step": 5, "val_loss": 5.5})
    table.on_trial_result(0, [a, b], b, {"step": 10, "val_loss": 5.8})
    table.on_trial_complete(0, [a, b], b)  # stopped by ASHA at 10 of 20 steps
    assert table.rows["t1"] == {"step": 10, "last": 5.8, "best": 5.5}
    out = capsys.readouterr().out
    assert out.count("raylm tune: 2 trial(s)") == 1 and "[raylm tune] trial t1 stopped by the scheduler at step 10: val_loss 5.8" in out
    rendered = str(table.table([a, b]).columns[0]._cells)
    assert "t1 *" in rendered and "t0 *" not in rendered  # the best so far is starred


def test_removed_plot_and_loss_plot_are_pngs(tmp_path):
    from raylm.core.manifest import Stats
    from raylm.core.plots import plot_removed
    from raylm.training.metrics import plot_losses

    stats = Stats(docs_in=10, docs_kept=6, removed={"filter:short": 3, "exact": 1}, skipped={"skip:revisit": 2})
    out = plot_removed(stats, {"in": 5000, "kept": 3000}, str(tmp_path / "removed.png"), "run")
    assert (tmp_path / "removed.png").read_bytes()[:4] == b"\x89PNG" and out.endswith("removed.png")
    rows = [{"step": s, "tokens": 100 * s, "loss": 5 - s / 10, "lr": 1e-3, **({"val_loss": 4.0} if s == 2 else {})} for s in (1, 2, 3)]
    assert plot_losses(rows, str(tmp_path / "loss.png")) and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_losses([], str(tmp_path / "none.png")) is None
