"""The data stage's two contracts: per-document steps alone (no Ray), and each run-level stage alone on
the session Ray, leaving what it declares in `writes` and nothing the next stage needs left unset."""

import fnmatch
import functools
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylm.cluster.recipe import load_config
from raylm.core.io import makedirs
from raylm.core.tokenizer import encode_documents
from raylm.pipelines.clean import Filter, Normalize
from raylm.pipelines.dedup import Dedup, ExactHash, MinHashSign, words_of
from raylm.pipelines.process import STEPS, Process
from raylm.pipelines.read import Read
from raylm.pipelines.run import STAGES, run_stages
from raylm.pipelines.stage import Block, Chunk, DataRun
from raylm.pipelines.tokenize import Tokenize, TokenizeFile
from raylm.pipelines.tokenizers import spec_from_config
from raylm.pipelines.write import Write
from tests.conftest import write_jsonl

GOOD = "The quick brown fox jumps over the lazy dog, and then it runs far away into the green hills. " * 3


def _cfg(tmp_path, *extra: str):
    return load_config(None, [f"storage_path={tmp_path}", "name=s", f"data.inputs=[{{path: '{tmp_path}/in/*.jsonl'}}]", *extra])


def _chunk(texts: list[str], prompt_chars: list | None = None, num_perm: int = 0) -> Chunk:
    n = len(texts)
    block = Block(
        ids=[f"d{i}" for i in range(n)],
        prompt_chars=prompt_chars or [None] * n,
        status=["kept"] * n,
        hashes=np.zeros(n, np.uint64),
        split=np.zeros(n, np.int8),
        sig=np.zeros((n, num_perm), np.uint32) if num_perm else None,
    )
    return Chunk(block, list(range(n)), list(texts))


def test_steps_in_order_with_unique_names():
    assert [s.name for s in STEPS] == [
        "url_filter",
        "extract",
        "normalize",
        "language",
        "pii",
        "filter",
        "decontaminate",
        "quality",
        "hash",
        "minhash",
    ]
    assert [s.name for s in STAGES] == ["classifier", "read", "process", "dedup", "paragraphs", "perplexity", "select", "tokenize", "write"]


def test_normalize_rejects_empty_and_leaves_task_records(tmp_path):
    cfg = _cfg(tmp_path).data
    c = _chunk([" \u200b\n\n", "  a  text \r\n", " \n"], prompt_chars=[None, None, 1])
    Normalize(cfg)(c)
    assert c.rows == [1, 2] and c.texts == ["a  text", " \n"]  # the task record is untouched
    assert c.block.status == ["reject:empty", "kept", "kept"]


def test_filter_names_the_reason_and_splits_words(tmp_path):
    cfg = _cfg(tmp_path).data
    c = _chunk(["short", GOOD, "tiny"], prompt_chars=[None, None, 2])
    Filter(cfg)(c)
    assert c.block.status[0].startswith("filter:") and c.rows == [1, 2]
    assert c.words == [words_of(GOOD), ["tiny"]]
    off = _cfg(tmp_path, "data.clean.enabled=false").data
    c = _chunk(["short"])
    Filter(off)(c)
    assert c.rows == [0]


def test_hash_minhash_fill_their_columns(tmp_path):
    cfg = _cfg(tmp_path).data
    c = _chunk([GOOD, GOOD + " more"], num_perm=cfg.dedup.minhash.num_perm)
    for step in (Filter, ExactHash, MinHashSign):
        assert step.enabled(cfg)
        step(cfg)(c)
    assert c.block.hashes[0] != c.block.hashes[1] and c.block.hashes.all()
    assert (c.block.sig[0] != 0).any() and 0.5 < (c.block.sig[0] == c.block.sig[1]).mean() < 1
    assert not MinHashSign.enabled(_cfg(tmp_path, "data.dedup.minhash.enabled=false").data)


def test_tokenize_file_encodes_what_survived_with_masks_for_tasks(tmp_path):
    """The tokenize stage's work on one staging file, without Ray: only kept rows that are no duplicate, each
    EOT + its text's tokens; a task row's mask covers its completion and closing EOT."""
    cfg = _cfg(tmp_path, "data.tokenizer={name: cl100k_base}").data
    prompt = "Passage:\nTo be\nPlay:"
    rows = {"uid": [0, 1, 2, 3], "status": ["kept", "filter:words", "kept", "kept"]}
    rows |= {"text": [GOOD, None, GOOD, prompt + " Hamlet"], "prompt_chars": [None, None, None, len(prompt)]}
    path = str(tmp_path / "00000000000000000000.parquet")
    pq.write_table(pa.table(rows), path)
    dups = tmp_path / "dups"
    dups.mkdir()
    pq.write_table(pa.table({"uid": [2], "reason": ["exact"], "kept_id": ["d0"]}), dups / "part-0.parquet")
    out = TokenizeFile(spec_from_config(cfg.tokenizer), str(dups), True)({"path": path, "first_uid": 0, "last_uid": 3})
    enc = _cl100k()
    got = pq.read_table(path + ".tokens").to_pylist()
    docs = [np.frombuffer(r["tokens"], np.uint32) for r in got]
    assert [r["ntokens"] for r in got] == [len(d) for d in docs] and out["tokens"] == sum(map(len, docs))
    assert [d[0] for d in docs] == [enc.eot_token] * 2 and enc.decode(docs[0][1:].tolist()) == GOOD
    assert enc.decode(docs[1][1:-1].tolist()) == prompt + " Hamlet" and docs[1][-1] == enc.eot_token
    masks = [np.frombuffer(r["mask"], np.uint8) for r in got]
    assert masks[0].all() and masks[1].tolist() == [0] * (1 + len(enc.encode(prompt))) + [1] * (len(enc.encode(" Hamlet")) + 1)


_PIECES = st.sampled_from(["<|endoftext|>", "<|fim_prefix|>", " ", "\n", "a", "é", "🎉", "The"]) | st.characters()


@settings(max_examples=60)
@given(st.lists(st.lists(_PIECES, max_size=12).map("".join), max_size=4))
def test_encode_documents_is_eot_then_encode_ordinary(texts):
    """Special-token text in a document is plain text (never the special token, never an error)."""
    enc = _cl100k()
    got = encode_documents(enc, texts)
    assert [d.dtype for d in got] == [np.uint32] * len(texts)
    assert [d.tolist() for d in got] == [[enc.eot_token] + enc.encode_ordinary(t) for t in texts]


@functools.cache
def _cl100k():
    return spec_from_config(load_config(None, []).data.tokenizer).load()


def _present(root: str, pattern: str) -> bool:
    found = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
    return any(fnmatch.fnmatch(f, pattern) for f in found)


@pytest.mark.slow
def test_each_stage_alone_writes_what_it_declares(ray_session, tmp_path):
    rng = random.Random(0)
    vocab = [f"w{k}ord" for k in range(300)]
    docs = [{"id": f"{i:03d}", "text": " ".join(rng.choice(vocab) for _ in range(80))} for i in range(30)]
    docs.append({"id": "dup", "text": docs[3]["text"]})
    write_jsonl(tmp_path / "in" / "a.jsonl", docs)
    cfg = _cfg(tmp_path, "data.tokenizer.train={vocab_size: 320}", "data.output.val_fraction=0.2")
    run = DataRun(cfg.data, str(tmp_path / "s" / "data"), say=lambda m: None)
    makedirs(run.docs_dir)
    for stage in (Read(), Process(), Dedup(), Tokenize(), Write()):
        assert stage.enabled(run)
        stats = run_stages(run, (stage,))[stage.name]
        assert stats.seconds["total"] > 0
        assert all(_present(run.root, p) for p in stage.writes), (stage.name, stage.writes)
    assert run.files and len(run.staging) == 1 and run.staging[0]["rows"] == 31
    assert pq.read_table(f"{run.dups_dir}").to_pylist()[0]["kept_id"] == "003"
    out = run.outputs
    assert out["docs_in"] == 31 and out["removed"] == {"exact": 1}
    assert out["splits"]["train"]["docs"] + out["splits"]["val"]["docs"] == 30
