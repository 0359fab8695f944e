"""Steps declare the per-document columns they add (Step.columns): the staging files and docs.parquet take
them from the step table, so a new step with a column is its module and its place in STEPS (no Ray)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylm.cluster.recipe import load_config
from raylm.pipelines.process import COLUMNS, STEPS, DocProcessor
from raylm.pipelines.read import SCHEMA
from raylm.pipelines.stage import Chunk, Column, Step, columns_of
from raylm.pipelines.staging import staging_schema
from raylm.pipelines.write import DOCS_SCHEMA, REMOVED_SCHEMA, docs_rows, docs_schema

GOOD = "The quick brown fox jumps over the lazy dog, and then it runs far away into the green hills. " * 3


class Vowels(Step):
    """A toy step, defined here only: it counts each document's vowels into a column of its own."""

    name = "vowels"
    columns = (Column("vowels", pa.int32()),)

    def __call__(self, chunk: Chunk) -> None:
        for k, text in enumerate(chunk.texts):
            chunk.set("vowels", k, sum(ch in "aeiou" for ch in text))


class Sloppy(Step):
    """Sets a column it does not declare."""

    name = "sloppy"

    def __call__(self, chunk: Chunk) -> None:
        for k in range(len(chunk.rows)):
            chunk.set("undeclared", k, 1)


def _cfg(tmp_path):
    return load_config(None, [f"storage_path={tmp_path}", "name=s", f"data.inputs=[{{path: '{tmp_path}/in/*.jsonl'}}]"]).data


def _batch(texts: list[str]) -> pa.Table:
    """A block of input records, as the read stage hands them to the process stage (one file: uids 0..n-1)."""
    n = len(texts)
    cols = {"uid": list(range(n)), "id": [f"d{i}" for i in range(n)], "src": [f"in.jsonl:{i + 1}" for i in range(n)], "text": texts}
    cols.update(nbytes=[len(t) for t in texts], reject=[None] * n, prompt_chars=[None] * n)
    return pa.table({**cols, **{k: [None] * n for k in ("url", "date", "payload", "charset")}}, schema=SCHEMA)


def test_docs_parquet_has_every_runs_columns_then_the_steps_in_step_order():
    assert DOCS_SCHEMA.names == ["id", "shard", "index", "src", "url", "date", "language", "language_score", "quality_fasttext", "quality_perplexity"]
    assert DOCS_SCHEMA.field("language_score").type == pa.float32()


def test_removed_parquet_has_the_columns_that_explain_a_removal():
    assert REMOVED_SCHEMA.names == ["id", "reason", "kept_id", "src", "quality_fasttext", "quality_perplexity"]


def test_a_staging_only_column_is_in_staging_not_in_docs_parquet(tmp_path):
    assert [c.name for c in COLUMNS if not c.docs] == ["match"]  # decontaminate's: removed.parquet's kept_id
    assert "match" in staging_schema(_cfg(tmp_path), COLUMNS).names


def test_a_new_steps_column_is_staged_and_reaches_docs_parquet(tmp_path):
    cfg, texts = _cfg(tmp_path), [GOOD, "short", GOOD + " Once more, with feeling."]
    steps = (*STEPS, Vowels)
    proc = DocProcessor(cfg, str(tmp_path / "staging"), steps)
    (tmp_path / "staging").mkdir()
    summary = proc(_batch(texts))
    staged = pq.read_table(summary["path"][0].as_py())
    assert staged.schema.field("vowels").type == pa.int32()
    # the short one is removed by the quality filter, before the toy step (last in the table) sees it
    assert staged["vowels"].to_pylist() == [sum(ch in "aeiou" for ch in GOOD), None, sum(ch in "aeiou" for ch in texts[2])]
    mask = np.array([s == "kept" for s in staged["status"].to_pylist()])
    schema = docs_schema(columns_of(steps))
    rows = docs_rows(staged, mask, np.array(["train/shard-000000.npy"] * 2, dtype=object), np.arange(2), schema)
    assert rows.column_names == [*docs_schema(columns_of(STEPS)).names, "vowels"]
    assert rows["vowels"].to_pylist() == [staged["vowels"][0].as_py(), staged["vowels"][2].as_py()]


def test_a_column_set_but_not_declared_fails_the_block(tmp_path):
    (tmp_path / "staging").mkdir()
    with pytest.raises(AssertionError, match="undeclared"):
        DocProcessor(_cfg(tmp_path), str(tmp_path / "staging"), (*STEPS, Sloppy))(_batch([GOOD]))


def test_a_column_name_taken_twice_is_refused(tmp_path):
    class Twice(Vowels):
        name = "twice"

    with pytest.raises(ValueError, match="vowels"):
        columns_of((Vowels, Twice))

    class Shadow(Step):
        name = "shadow"
        columns = (Column("shard", pa.string()),)  # docs.parquet's own

    with pytest.raises(ValueError, match="shard"):
        docs_schema(columns_of((Shadow,)))
    with pytest.raises(ValueError, match="text"):
        staging_schema(_cfg(tmp_path), (Column("text", pa.string()),))
