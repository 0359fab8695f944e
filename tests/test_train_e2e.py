"""The main job end to end on the sample through the CLI (`raylm run`: data, 2-worker Ray Train,
sample), its outputs (metrics, TensorBoard events, loss curve, checkpoints), `raylm sample`, and
`raylm train` resuming the run to more steps."""
import json

import pytest

from cluster.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")


def _rows(run):
    return [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]


def test_run_sample_then_resume(ray_session, tmp_path, capsys):
    over = [f"storage_path={tmp_path}", "name=tr", "train.model={n_layer: 2, n_head: 2, d_model: 64, seq_len: 64}",
            "train.batch={micro_batch_size: 4, global_batch_tokens: 1024}", "train.max_steps=12",
            "train.schedule.warmup_steps=2", "train.eval={every: 6, batches: 2}", "train.checkpoint={every: 6, keep: 2}",
            "train.scaling.num_workers=2"]
    sets = [a for o in over for a in ("--set", o)]
    assert main(["run", RECIPE, *sets, "--prompt", "KING"]) == 0
    out = capsys.readouterr().out
    assert "--- sample (prompt 'KING') ---\nKING" in out and "unigram entropy" in out
    run = tmp_path / "tr"
    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[0]["tokens"] == 1024 and rows[-1]["loss"] < rows[0]["loss"]
    assert "val_loss" in rows[5] and "val_ppl" in rows[-1] and rows[0]["mfu"] is None
    assert (run / "train" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run / "train" / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = sorted(p for p in (run / "train").glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) == 2 and all((c / "tokenizer.tiktoken").exists() and (c / "rng-1.pt").exists() for c in ckpts)

    # sampling is deterministic for a seed, from the run dir (latest checkpoint) or a checkpoint dir
    args = ["--prompt", "KING", "--max-new-tokens", "12", "--seed", "3"]
    assert main(["sample", str(run), *args]) == 0
    first = capsys.readouterr().out
    assert main(["sample", str(ckpts[-1]), *args]) == 0
    assert capsys.readouterr().out == first and first.startswith("KING")
    assert main(["sample", str(tmp_path / "nothing-here")]) == 2

    # the same command with more steps resumes from step 12 instead of starting over
    assert main(["train", RECIPE, *sets, "--set", "train.max_steps=18"]) == 0
    assert [r["step"] for r in _rows(run)] == list(range(1, 19))
    assert "step 18" in capsys.readouterr().out
