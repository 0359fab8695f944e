"""Decontamination (pipelines/decontaminate.py): n-gram hashing and matching as pure functions (hypothesis),
and the data stage end to end removing exactly the planted documents."""

import json
import random

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raylm.pipelines.decontaminate import EvalNgrams, ngram_hashes

WORDS = [f"w{i}" for i in range(500)]


def test_hashes_ignore_case_punctuation_and_spacing():
    a = ngram_hashes("The quick, brown fox -- jumps over the lazy dog!", 3)
    b = ngram_hashes("the QUICK brown\n\nfox jumps over; the lazy   dog", 3)
    assert len(a) == 7 and (a == b).all()
    assert len(ngram_hashes("too few words here", 13)) == 0
    assert not (ngram_hashes("a b c", 3) == ngram_hashes("c b a", 3)).any()  # order matters


@given(st.lists(st.sampled_from(WORDS), min_size=13, max_size=60), st.integers(0, 47), st.lists(st.sampled_from(WORDS), max_size=30))
def test_a_document_holding_13_words_of_an_example_matches(example, at, around):
    at = min(at, len(example) - 13)
    planted = around[:10] + [w.upper() if i % 2 else w for i, w in enumerate(example[at : at + 13])] + around[10:]
    ev = EvalNgrams([("eval.jsonl:1", " ".join(example))], 13)
    assert ev.match(", ".join(planted)) == "eval.jsonl:1"
    assert ev.match(" ".join(f"x{w}" for w in planted)) is None  # other words: no match


def test_eval_files_jsonl_and_text(tmp_path):
    (tmp_path / "qa.jsonl").write_text(json.dumps({"prompt": "one two three four", "completion": "five six"}) + "\n\n")
    (tmp_path / "ref.txt").write_text("alpha beta gamma delta\nepsilon zeta eta theta\n")
    ev = EvalNgrams.from_files([str(tmp_path / "qa.jsonl"), str(tmp_path / "ref.txt")], 4)
    assert ev.match("x ONE two three four y") == f"{tmp_path}/qa.jsonl:1"
    assert ev.match("four five six seven") is None  # prompt and completion joined: 'three four five six' would match
    assert ev.match("three four five six") == f"{tmp_path}/qa.jsonl:1"
    assert ev.match("epsilon zeta eta theta") == f"{tmp_path}/ref.txt:2"
    assert ev.match("delta epsilon zeta eta") is None  # lines are separate examples


@pytest.mark.slow
def test_data_stage_removes_exactly_the_planted_documents(ray_session, tmp_path):
    from raylm.core.paths import RunPaths
    from raylm.pipelines.config import DataConfig
    from raylm.pipelines.run import run_data
    from tests.conftest import sample_docs

    rng = random.Random(7)
    examples = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(3)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": e}) + "\n" for e in examples))
    docs = [{"id": d["id"], "text": d["text"]} for d in sample_docs()[:12]]
    planted = set()
    for k, d in enumerate(docs[:6]):
        words = examples[k % 3].split()
        n = 13 if k < 4 else 12  # four share a 13-gram; two only a 12-gram, which is no contamination
        piece = " ".join(words[k : k + n]).upper()
        d["text"] = d["text"][:2000] + f"\n{piece}.\n" + d["text"][2000:]
        if n == 13:
            planted.add(d["id"])
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))

    def run(name: str, decon: bool) -> dict:
        cfg = DataConfig.model_validate(
            {
                "inputs": [{"path": str(tmp_path / "in.jsonl")}],
                "tokenizer": {"name": "cl100k_base"},
                "decontaminate": {"files": [str(tmp_path / "eval.jsonl")] if decon else [], "ngram": 13},
            }
        )
        return run_data(cfg, RunPaths(str(tmp_path), name), summary=False).as_json()

    base, man = run("base", False), run("decon", True)
    removed = pq.read_table(tmp_path / "decon" / "data" / "removed.parquet").to_pylist()
    contaminated = {r["id"]: r["kept_id"] for r in removed if r["reason"] == "filter:contamination"}
    assert set(contaminated) == planted and all(v.startswith(f"{tmp_path}/eval.jsonl:") for v in contaminated.values())
    assert man["stats"]["removed"].get("filter:contamination") == 4
    assert {k: v for k, v in man["stats"]["removed"].items() if k != "filter:contamination"} == base["stats"]["removed"]
    assert man["stats"]["docs_kept"] == base["stats"]["docs_kept"] - 4
    stats = json.loads((tmp_path / "decon" / "data" / "stats.json").read_text())
    assert stats["stages"]["process"]["counts"]["contaminated"] == 4
