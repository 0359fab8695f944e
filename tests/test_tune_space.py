"""The search space of tune.param_space: parsing, the errors a user gets (with the key's path), and
what a trial's recipe looks like. Pure logic: no Ray."""

import pytest

from raylm.cluster.cli import main
from raylm.cluster.recipe import load_config
from raylm.core.schema import ConfigError
from raylm.tuning.campaign import build_scheduler, build_search, check, max_concurrent, trial_recipe
from raylm.tuning.space import apply_trial, to_tune, validate_space
from tests.conftest import ROOT

RECIPE = ROOT / "cluster" / "recipes" / "tune-local.yaml"


def _cfg(space: str, *more):
    return load_config(RECIPE, [f"tune.param_space={space}", *more])


def test_the_five_kinds_parse_into_tune_objects():
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = _cfg(
        "{train.optim.lr: {loguniform: [1.0e-4, 1.0e-2]}, train.optim.weight_decay: {uniform: [0, 0.2]},"
        " train.model.n_layer: {randint: [1, 4]}, train.batch.micro_batch_size: {choice: [8, 16]},"
        " train.schedule.decay: {grid: [cosine, wsd]}}"
    )
    space = to_tune(validate_space(cfg))
    assert isinstance(space["train.optim.lr"], Float) and isinstance(space["train.model.n_layer"], Integer)
    assert isinstance(space["train.batch.micro_batch_size"], Categorical)
    assert space["train.schedule.decay"] == {"grid_search": ["cosine", "wsd"]}


@pytest.mark.parametrize(
    "space, message",
    [
        ("{train.optim.lrr: {uniform: [0, 1]}}", "tune.param_space.train.optim.lrr: not a key of the recipe (did you mean 'train.optim.lr'?)"),
        ("{train.optimizer.lr: {uniform: [0, 1]}}", "tune.param_space.train.optimizer.lr: not a key of the recipe"),
        ("{train.optim.lr: {normal: [0, 1]}}", "unknown distribution 'normal'"),
        ("{train.optim.lr: {loguniform: [0, 1]}}", "loguniform: bounds must be positive"),
        ("{train.optim.lr: {uniform: [1, 0]}}", "low must be below high"),
        ("{train.optim.lr: {uniform: 3}}", "expected [low, high]"),
        ("{train.optim.lr: 0.1}", "expected one of"),
        ("{train.model.n_layer: {randint: [1.5, 4]}}", "randint: bounds must be integers"),
        ("{train.model.n_layer: {choice: []}}", "expected a non-empty list"),
        ("{train.schedule.decay: {choice: [cosine, linear]}}", "value 'linear' is not valid there"),
        ("{tune.num_samples: {choice: [1, 2]}}", "the tune section itself cannot be searched"),
        ("{}", "tune.param_space: empty"),
    ],
)
def test_bad_spaces_fail_with_the_key_path(space, message):
    with pytest.raises(ConfigError) as e:
        check(_cfg(space))
    assert message in str(e.value)


def test_searcher_constraints():
    with pytest.raises(ConfigError, match="optuna: grid entries"):
        check(_cfg("{train.schedule.decay: {grid: [cosine, wsd]}}", "tune.search.type=optuna"))
    with pytest.raises(ConfigError, match="every param_space entry must be"):
        check(_cfg("{train.optim.lr: {uniform: [0.001, 0.01]}}", "tune.search.type=grid"))
    cfg = _cfg("{train.optim.lr: {uniform: [0.001, 0.01]}}", "tune.search.type=optuna")
    assert type(build_search(cfg.tune, validate_space(cfg), 2)).__name__ == "ConcurrencyLimiter"


def test_trial_recipe_and_concurrency():
    cfg = load_config(RECIPE)
    r = trial_recipe(cfg.model_dump(mode="json"), {"train.optim.lr": 0.005}, "abc_00001", "/data/x")
    assert r["train"]["optim"]["lr"] == 0.005 and r["name"] == "shakespeare-tune/tune/trials/abc_00001"
    assert r["train"]["data_path"] == "/data/x" and cfg.train.optim.lr == 1.0e-3  # the base is untouched
    assert apply_trial({"a": {"b": 1}}, {"a.c": 2}) == {"a": {"b": 1, "c": 2}}
    assert max_concurrent(cfg, {"CPU": 2.0}) == 2  # 1 worker x 1 CPU per trial
    assert max_concurrent(load_config(RECIPE, ["train.scaling.num_workers=2", "train.batch.micro_batch_size=8"]), {"CPU": 5.0}) == 2
    with pytest.raises(ConfigError, match="one trial needs"):
        max_concurrent(load_config(RECIPE, ["train.scaling.use_gpu=true"]), {"CPU": 8.0})


def test_cli_bad_space_exits_2_before_ray(capsys):
    assert main(["tune", str(RECIPE), "--set", "tune.param_space={train.optim.lrr: {uniform: [0, 1]}}"]) == 2
    assert "did you mean 'train.optim.lr'" in capsys.readouterr().err


def test_summary_ranks_trials_and_puts_failed_ones_last(capsys):
    from raylm.tuning.results import best_row, print_summary

    cfg = load_config(RECIPE)
    rows = [
        {
            "trial_id": f"t{i}",
            "train.optim.lr": 1e-3 * i,
            "train.optim.weight_decay": 0.1,
            "final_val_loss": v,
            "best_val_loss": v,
            "steps": 10,
            "status": s,
            "history": [],
        }
        for i, (v, s) in enumerate([(None, "error"), (7.0, "stopped"), (None, "error"), (6.5, "done")])
    ]
    assert best_row(cfg, rows)["trial_id"] == "t3"
    print_summary(cfg, rows, {"best": "b.yaml"})
    out = capsys.readouterr().out
    assert out.index("t3 *") < out.index("t1") < out.index("t0") and "raylm train b.yaml" in out


@pytest.mark.parametrize(
    "space, more, message",
    [
        ("{train.model.n_layer: {choice: [1, 2]}}", [], "PBT changes values under a running model"),
        ("{train.optim.lr: {grid: [0.001, 0.01]}}", [], "PBT cannot perturb a grid entry"),
        ("{train.optim.lr: {uniform: [0.001, 0.01]}}", ["tune.scheduler.perturbation_interval=15"], "multiple of train.eval.every"),
        (
            "{train.optim.lr: {uniform: [0.001, 0.01]}}",
            ["tune.scheduler={type: pbt, time_attr: tokens, perturbation_interval: 3000}"],
            "not a whole number of steps",
        ),
    ],
)
def test_pbt_spaces_that_cannot_be_perturbed_fail(space, more, message):
    with pytest.raises(ConfigError) as e:
        check(_cfg(space, "tune.scheduler.type=pbt", *more))
    assert message in str(e.value)


def test_pbt_trials_checkpoint_at_every_perturbation():
    cfg = _cfg(
        "{train.optim.lr: {uniform: [0.001, 0.01]}, train.model.dropout: {uniform: [0, 0.2]}}",
        "tune.scheduler={type: pbt, time_attr: tokens, perturbation_interval: 40960}",
        "train.report_every=5",
    )
    check(cfg)
    r = trial_recipe(cfg.model_dump(mode="json"), {"train.optim.lr": 0.002}, "t0", "/d", "from-000020-ab")
    assert r["train"]["checkpoint"]["every"] == 20 and r["train"]["report_every"] is None
    assert r["name"] == "shakespeare-tune/tune/trials/t0/from-000020-ab" and r["train"]["optim"]["lr"] == 0.002


@pytest.mark.parametrize("synch", [False, True])
def test_pbt_scheduler_is_tunes_own_with_the_recipes_settings(synch):
    space = "{train.optim.lr: {uniform: [0.001, 0.01]}}"
    cfg = _cfg(space, f"tune.scheduler={{type: pbt, perturbation_interval: 20, quantile_fraction: 0.5, synch: {str(synch).lower()}}}")
    s = build_scheduler(cfg.tune, cfg, check(cfg))
    assert type(s).__name__ == "PopulationBasedTraining"
    assert (s._synch, s._perturbation_interval, s._quantile_fraction) == (synch, 20, 0.5)


def test_num_samples_unset_runs_a_grid_once():
    from raylm.tuning.config import TuneConfig

    grid = {"train.optim.lr": {"grid": [1e-3, 3e-3]}}
    assert TuneConfig(param_space=grid).num_samples == 1  # not the random-search default of 8 repeats of the grid
    assert TuneConfig(param_space=grid, num_samples=3).num_samples == 3  # set: Tune's meaning, 3 repeats
    assert TuneConfig(param_space={"train.optim.lr": {"choice": [1e-3, 3e-3]}}).num_samples == 8


def test_a_campaign_can_search_a_sources_weight():
    # a source's weight is read at training time: each trial trains on the campaign's shards with its own weight
    mix = ROOT / "cluster" / "recipes" / "mixture.yaml"
    cfg = load_config(mix, ["tune.param_space={data.sources.web.weight: {uniform: [0.1, 0.5]}}"])
    assert validate_space(cfg) == {"data.sources.web.weight": ("uniform", [0.1, 0.5])}
    r = trial_recipe(cfg.model_dump(mode="json"), {"data.sources.web.weight": 0.3}, "abc_00001", "/data/x")
    assert r["data"]["sources"]["web"]["weight"] == 0.3 and r["data"]["sources"]["plays"]["weight"] == 0.8
    with pytest.raises(ConfigError, match="did you mean 'data.sources.web.weight'"):
        check(load_config(mix, ["tune.param_space={data.sources.web.wieght: {uniform: [0.1, 0.5]}}"]))
    with pytest.raises(ConfigError, match="is not valid there"):  # a source the recipe does not have
        check(load_config(mix, ["tune.param_space={data.sources.books.weight: {uniform: [0.1, 0.5]}}"]))


TASKS = ROOT / "data" / "downstream"  # the bundled task files: word-order, next-line (multiple choice), next-line-cloze


@pytest.mark.parametrize(
    "sets, message",
    [
        (["tune.metric=tasks/core", "tune.mode=max"], "tune.metric: 'tasks/core' needs train.eval.tasks"),
        ([f"train.eval.tasks=[{TASKS}]", "tune.metric=tasks/core", "tune.mode=min"], "which is better higher: set tune.mode: max"),
        ([f"train.eval.tasks=[{TASKS}]", "tune.metric=tasks/next-line-cloze/bpb", "tune.mode=max"], "set tune.mode: min"),
        ([f"train.eval.tasks=[{TASKS}]", "tune.metric=tasks/word-order/bpb", "tune.mode=min"], "is not a metric of train.eval.tasks"),
        (["tune.metric=accuracy"], "'accuracy' is not reported by the loop"),
    ],
)
def test_a_tune_metric_the_trials_do_not_report_exits_2_naming_it(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(load_config(RECIPE, sets))


@pytest.mark.parametrize(("metric", "mode"), [("tasks/core", "max"), ("tasks/word-order/acc_norm", "max"), ("tasks/next-line-cloze/bpb", "min")])
def test_a_task_metric_of_the_tasks_is_a_tune_metric(metric, mode):
    check(load_config(RECIPE, [f"train.eval.tasks=[{TASKS}]", f"tune.metric={metric}", f"tune.mode={mode}"]))
