"""Model-based quality: a fastText classifier trained in raylm from labelled documents (`raylm quality train`).

    data:
      quality:
        fasttext:
          train: {labels: {hq: [prose/*.jsonl], lq: [boilerplate.txt]}, held_out: 0.1, seed: 0}

Each label's documents come from its files (a .jsonl record's `text`, or a line of any other file: the reader of
data.decontaminate.files), each on one line (whitespace collapsed, as fastText reads one example a line). A document
is held out by the hash of its text and the seed (xxhash: the same split on every machine), so `held_out` of each
label is reported on and never trained on. Training is fastText's supervised mode through floret (explosion's
maintained fastText fork, whose models are fastText's), one thread, the training lines shuffled by the seed: the
same model for a seed. Written to `{run}/quality/`: `classifier.bin`, and `quality.json` with its sha256, the
counts, accuracy and each label's precision and recall on the held-out documents.

floret's `predict` converts with `np.array(copy=False)`, which numpy 2 refuses; `predict` here calls the model's own
predict, which returns (probability, label) pairs.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile

import xxhash

from raylm.core.io import RecordError
from raylm.pipelines.config import FastTextTrainConfig

LABEL = "__label__"
CLASSIFIER = "classifier.bin"
REPORT = "quality.json"


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


def load_classifier(path: str):
    """A fastText model file (floret reads fastText's format); QualityError when it is not one."""
    import floret

    if not os.path.isfile(path):
        raise QualityError(f"{path}: no such fastText model file")
    try:
        return floret.load_model(path)
    except Exception as e:  # noqa: BLE001 - floret raises ValueError or RuntimeError on a file of another kind
        raise QualityError(f"{path}: not a fastText model ({type(e).__name__}: {str(e).strip()[:200]})") from None


def predict(model, texts: list[str]) -> list[tuple[str, float]]:
    """The most likely label of each text (one line each) and its probability."""
    out = []
    for t in texts:
        ((prob, label),) = model.f.predict(one_line(t) + "\n", 1, 0.0, "strict")
        out.append((label.removeprefix(LABEL), float(prob)))
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


def train_classifier(cfg: FastTextTrainConfig, out_dir: str) -> dict:
    """Train on each label's documents but the held-out ones; write classifier.bin and quality.json to `out_dir`
    (made if missing); returns the report."""
    import floret

    from raylm.core.io import makedirs, write_json

    docs = labelled_docs(cfg)
    train, test = [], []
    for label, texts in docs.items():
        for t in texts:
            (test if held_out(t, cfg.held_out, cfg.seed) else train).append((label, t))
    if not train:
        raise QualityError("data.quality.fasttext.train.held_out: every document was held out; lower it")
    random.Random(cfg.seed).shuffle(train)
    makedirs(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{LABEL}{label} {t}\n" for label, t in train)
        opts = {"epoch": cfg.epoch, "lr": cfg.lr, "wordNgrams": cfg.word_ngrams, "dim": cfg.dim, "minCount": cfg.min_count, "bucket": cfg.bucket}
        model = floret.train_supervised(input=path, thread=1, seed=cfg.seed, verbose=0, **opts)
    model_path = os.path.join(out_dir, CLASSIFIER)
    model.save_model(model_path)
    with open(model_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    report = {
        "model": model_path,
        "sha256": sha,
        "documents": {label: len(t) for label, t in docs.items()},
        "trained_on": len(train),
        **_report(cfg, test, predict(model, [t for _, t in test])),
        "config": cfg.model_dump(mode="json"),
    }
    write_json(os.path.join(out_dir, REPORT), report)
    return report
