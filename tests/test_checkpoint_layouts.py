"""Sharded checkpoints (torch.distributed.checkpoint) without Ray: the Trainer Ray Train drives, on 1 or 2 ranks
of a gloo process group started here (torch.multiprocessing), saving and loading through the same calls a Ray
Train worker makes. An FSDP2 run resumed from its own sharded checkpoint repeats the uninterrupted run's losses bit
for bit; a checkpoint of 2 FSDP2 ranks loads on 1, one of 1 on 2, and one of 2 DDP ranks under FSDP2, each with the
model and optimizer state equal to what was saved (1e-7) and training going on from it. The downstream tasks of
train.eval.tasks, their examples split across 2 ranks, give exactly the numbers of 1 rank."""

import json
import os
import shutil

import pytest
import torch

from tests.conftest import TINY_MODEL, free_port, write_tiny_shards

# slow (3 process groups of 2 ranks: ~13 s) but without Ray: run beside the Ray tests
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"), pytest.mark.slow, pytest.mark.own_ray]


def _trainer(root: str, rank: int, world: int, parallelism: str):
    from raylm.training.config import TrainJob
    from raylm.training.worker import Trainer

    t = {"model": TINY_MODEL, "batch": {"micro_batch_size": 2, "global_batch_tokens": 128}, "max_steps": 8, "data_path": f"{root}/data"}
    t |= {"parallelism": parallelism, "optim": {"name": "adamw"}}
    t["scaling"] = {"num_workers": world, "use_gpu": False, "resources_per_worker": {"CPU": 1}}
    job = TrainJob.from_recipe({"storage_path": root, "name": "g", "train": t})
    return Trainer(job, rank, world, torch.device("cpu"))


def _full(tr) -> dict:
    """A copy of the trainer's whole model and optimizer state (a collective), flattened to name -> tensor. Not on a
    fresh optimizer: get_state_dict would create its state with a step of zero gradients (AdamW's step count 1)."""
    from raylm.training import checkpoint

    model, optim = checkpoint.full_state(tr.model, tr.opt)
    flat = {f"model.{k}": v for k, v in model.items()}
    for pid, st in optim.get("state", {}).items():  # rank 0 alone holds the gathered state
        flat |= {f"optim.{pid}.{k}": torch.as_tensor(v) for k, v in st.items()}
    return {k: v.detach().clone() for k, v in flat.items()}  # on 1 rank, the live tensors: training goes on in them


def _async_staging(save: str) -> str | None:
    """A plan's save path ending in async-copy or async-in_place: an asynchronous save with that staging."""
    return save.rpartition("async-")[2] if "async-" in save else None


def _ranks(rank: int, world: int, port: int, root: str, plan: list[tuple]) -> None:
    """One rank running `plan`: (parallelism, checkpoint to load or None, steps, checkpoint to save or None, tag)
    phases, each a fresh Trainer; rank 0 writes each phase's losses and states under root/out-<tag>.pt."""
    import torch.distributed as dist

    from raylm.training import saving

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for parallelism, load, steps, save, tag in plan:
        tr = _trainer(root, rank, world, parallelism)
        if load:
            tr.restore(None, load)
        out = {"loaded": _full(tr) if load else {}, "losses": []}
        for i in range(steps):
            out["losses"].append(tr.train_step()["loss"])
            if save and i + 1 == steps // 2:  # a checkpoint mid-run, the run going on as Ray Train's does
                out["saved"] = _full(tr)
                staging = _async_staging(save)
                if staging:  # begun here, written while the next steps train, completed after them
                    stager = saving.stager(torch.device("cpu"), staging)
                    # the Trainer's own: an in-place save holds its next optimizer update until it is written
                    tr.pending = pending = saving.start(tr, {}, saving.save_group(world), stager)
                else:
                    os.makedirs(save, exist_ok=True)
                    tr.save(save)
        if save and _async_staging(save):
            tr.pending = None
            saving.finish(pending, world, None)
            shutil.copytree(pending.directory, save, dirs_exist_ok=True)  # each rank's part, as Ray Train gathers them
            dist.barrier()
        if rank == 0:
            torch.save(out, f"{root}/out-{tag}.pt")
    tasks = _tasks_row(root, rank, world)  # the downstream tasks on a fresh FSDP2 model, the examples split across ranks
    if rank == 0:
        torch.save(tasks, f"{root}/tasks-{world}.pt")
    dist.destroy_process_group()


def _tasks_row(root: str, rank: int, world: int) -> dict:
    """train.eval.tasks' metrics of a fresh trainer (the same weights on any world: seeded) on 5 multiple-choice
    and 3 cloze examples of random token ids (5 and 3 split unevenly over 2 ranks)."""
    import random

    from raylm.core.taskfile import Cloze, MultipleChoice, Task, TaskHeader
    from raylm.training.tasks import Prepared

    rng = random.Random(0)
    ids = lambda n: [rng.randrange(99) for _ in range(n)]  # noqa: E731
    mc = [([ids(6)] + [ids(rng.randint(1, 4)) for _ in range(3)]) for _ in range(5)]
    cz = [(ids(7), ids(3)) for _ in range(3)]
    mc_examples = [MultipleChoice(context="c", choices=["a", "bb", "ccc"], gold=i % 3) for i in range(5)]
    mc_task = Task(TaskHeader(name="mc", kind="multiple_choice"), mc_examples)
    cz_task = Task(TaskHeader(name="cz", kind="cloze"), [Cloze(context="c", continuation="abc") for _ in range(3)])
    tr = _trainer(root, rank, world, "fsdp")
    tr.tasks = [Prepared(mc_task, [[(m[0], c) for c in m[1:]] for m in mc]), Prepared(cz_task, [[pair] for pair in cz])]
    return tr.task_metrics()


def _spawn(root, world: int, plan: list[tuple]) -> dict:
    torch.multiprocessing.spawn(_ranks, args=(world, free_port(), str(root), plan), nprocs=world, join=True)
    return {tag: torch.load(f"{root}/out-{tag}.pt", weights_only=True) for *_, tag in plan}


def _assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    worst = max(float((got[k].double() - want[k].double()).abs().max()) for k in want)
    assert worst <= 1e-7, worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three process groups: 2 FSDP2 ranks (8 steps, saving at 4; then resumed from that checkpoint for 4 more; an
    asynchronous save and its load), 1 FSDP2 rank (loading the 2 ranks' checkpoint, saving its own), 2 ranks (DDP
    saving; FSDP2 loading that and the 1 rank's checkpoint)."""
    root = write_tiny_shards(tmp_path_factory.mktemp("layouts"))
    fs2, fs1, ddp2, copy, inplace = (str(root / n) for n in ("fsdp2", "fsdp1", "ddp2", "async-copy", "async-in_place"))
    # g, i: asynchronous saves (a staged copy; the live tensors) completed two steps later (each must hold the state
    # of its own step); h, j load them
    async_plan = [("fsdp", None, 4, copy, "g"), ("fsdp", copy, 2, None, "h"), ("fsdp", None, 4, inplace, "i"), ("fsdp", inplace, 2, None, "j")]
    out = _spawn(root, 2, [("fsdp", None, 8, fs2, "a"), ("fsdp", fs2, 4, None, "b"), *async_plan])
    out |= _spawn(root, 1, [("fsdp", fs2, 4, fs1, "c")])
    out |= _spawn(root, 2, [("ddp", None, 4, ddp2, "d"), ("fsdp", ddp2, 2, None, "e"), ("fsdp", fs1, 2, None, "f")])
    return root, out


def test_fsdp2_resumed_from_its_sharded_checkpoint_repeats_the_losses_bitwise(runs):
    _, out = runs
    assert out["b"]["losses"] == out["a"]["losses"][4:]


def test_the_checkpoint_holds_one_file_per_rank_and_meta_json_names_them(runs):
    root, _ = runs
    meta = json.loads((root / "fsdp2" / "meta.json").read_text())
    assert (meta["format"], meta["world"], meta["step"]) == ("sharded", 2, 4)
    assert {"dcp/__0_0.distcp", "dcp/__1_0.distcp", "dcp/.metadata", "trainer.pt", "rng-0.pt", "rng-1.pt"} <= set(meta["files"])
    assert not (root / "fsdp2" / "state.pt").exists()


ASYNC_RUNS = pytest.mark.parametrize("saved,loaded", [("g", "h"), ("i", "j")], ids=["copy", "in_place"])


@ASYNC_RUNS
def test_an_async_save_holds_the_state_of_its_step_while_training_goes_on(runs, saved, loaded):
    """Completed two steps later: a copy staged at the save, or written from the live tensors (2 s late,
    RAYLM_TESTING_CHECKPOINT_WRITE_DELAY_S) while the next update waits for it."""
    _, out = runs
    _assert_close(out[loaded]["loaded"], out[saved]["saved"])


@ASYNC_RUNS
def test_training_resumed_from_an_async_save_repeats_the_losses_bitwise(runs, saved, loaded):
    _, out = runs
    assert out[loaded]["losses"] == out[saved]["losses"][2:]


def test_two_fsdp2_ranks_to_one(runs):
    _, out = runs
    _assert_close(out["c"]["loaded"], out["a"]["saved"])


def test_one_fsdp2_rank_to_two(runs):
    _, out = runs
    _assert_close(out["f"]["loaded"], out["c"]["saved"])


def test_ddp_to_fsdp2(runs):
    _, out = runs
    _assert_close(out["e"]["loaded"], out["d"]["saved"])


def test_task_metrics_split_across_two_ranks_equal_one_rank_s(runs):
    root, _ = runs
    two, one = (torch.load(f"{root}/tasks-{w}.pt", weights_only=True) for w in (2, 1))
    assert two == one and {"tasks/mc/acc", "tasks/mc/acc_norm", "tasks/cz/acc", "tasks/cz/bpb", "tasks/core"} <= set(two)


@pytest.mark.parametrize("tag", ["c", "e", "f"])
def test_training_goes_on_after_a_layout_change(runs, tag):
    _, out = runs
    assert all(torch.isfinite(torch.tensor(x)) for x in out[tag]["losses"]) and len(out[tag]["losses"]) >= 2
