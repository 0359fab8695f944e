"""End-to-end runs of the data stage on a shared local Ray instance."""

import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from raylm.cluster.recipe import load_config
from raylm.core.manifest import read_manifest
from raylm.core.shards import iter_documents
from raylm.core.tokenizer import TokenizerSpec, load_encoding
from raylm.pipelines.clean import normalize
from raylm.pipelines.run import run_data
from raylm.pipelines.staging import split_of
from tests.conftest import ROOT, sample_docs, write_jsonl

pytestmark = pytest.mark.slow
RECIPE = ROOT / "cluster" / "recipes" / "local.yaml"


def _cfg(tmp_path, *overrides):
    # cl100k_base unless a test says otherwise (the recipe trains a BPE: tested where it matters)
    return load_config(RECIPE, [f"storage_path={tmp_path}", "name=t", "data.tokenizer={name: cl100k_base}", *overrides])


def _decode_split(root, split, enc):
    return [enc.decode(doc[1:].tolist()) for doc in iter_documents(root, split)]


def _tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("stats.json", "run.json")  # timings; how and when it ran
    }


def test_sample_round_trip_split_and_conservation(ray_session, tmp_path):
    cfg = _cfg(tmp_path)
    man = run_data(cfg.data, cfg.paths).as_json()
    root = f"{tmp_path}/t/data"
    st = man["stats"]
    assert st["docs_in"] == 78 and st["docs_in"] == st["docs_kept"] + sum(st["removed"].values())
    enc = load_encoding(TokenizerSpec("cl100k_base"))
    assert man["dtype"] == "uint32" and man["tokenizer"]["eot"] == enc.eot_token
    removed = set(pq.read_table(f"{root}/removed.parquet")["id"].to_pylist())
    kept = [d for d in sample_docs() if d["id"] not in removed]
    cleaned = {d["id"]: normalize(d["text"], cfg.data.clean.normalize) for d in kept}
    by_split = {0: [], 1: []}
    for d in kept:  # input order, each wholly in the split its id hashes to
        by_split[split_of(d["id"], cfg.data.output.seed, cfg.data.output.val_fraction)].append(cleaned[d["id"]])
    assert _decode_split(root, "train", enc) == by_split[0]
    assert _decode_split(root, "val", enc) == by_split[1]
    assert len(by_split[1]) > 0
    # each split's bytes: the UTF-8 text its tokens decode to (what val_bpb divides by), counted by hand
    assert [man["splits"][s]["bytes"] for s in ("train", "val")] == [sum(len(t.encode()) for t in by_split[k]) for k in (0, 1)]
    for doc in iter_documents(root, "train"):
        assert doc[0] == enc.eot_token
    # shard sha256 in the manifest is that of the file
    sh = man["splits"]["train"]["shards"][0]
    assert hashlib.sha256((Path(root) / sh["path"]).read_bytes()).hexdigest() == sh["sha256"]
    assert len(man["splits"]["train"]["shards"]) >= 2  # shard_tokens 1M in the recipe
    # a finished run is not redone
    before = _tree_digest(Path(root))
    run_data(cfg.data, cfg.paths)
    assert _tree_digest(Path(root)) == before


def test_split_and_output_stable_across_batching(ray_session, tmp_path):
    a = _cfg(tmp_path, "name=a")
    b = _cfg(tmp_path, "name=b", "data.execution.batch_bytes=300000", "data.dedup.partitions=3")
    run_data(a.data, a.paths)
    run_data(b.data, b.paths)
    da, db = _tree_digest(tmp_path / "a" / "data"), _tree_digest(tmp_path / "b" / "data")
    da.pop("manifest.json")
    db.pop("manifest.json")  # the manifest holds the (different) config
    assert da == db
    ma, mb = read_manifest(f"{tmp_path}/a/data"), read_manifest(f"{tmp_path}/b/data")
    assert ma.splits == mb.splits and ma.stats == mb.stats


def test_killed_run_restarts_byte_identical(ray_session, tmp_path):
    """Kill the driver mid-run (after staging is written), run again: same bytes as a clean run."""
    import ray

    trained = "data.tokenizer={train: {vocab_size: 4096}}"  # the recipe's: BPE training is redone byte-identically too
    ref = _cfg(tmp_path, "name=ref", trained)
    run_data(ref.data, ref.paths)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "raylm", "data", str(RECIPE), "--set", f"storage_path={tmp_path}", "--set", "name=k"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    docs = tmp_path / "k" / "data" / "_work" / "docs"
    deadline = time.time() + 120
    while time.time() < deadline and not (docs.exists() and any(docs.glob("*.parquet"))):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k" / "data" / "manifest.json").exists()
    run_data(*(lambda c: (c.data, c.paths))(_cfg(tmp_path, "name=k", trained)))
    dk, dr = _tree_digest(tmp_path / "k" / "data"), _tree_digest(tmp_path / "ref" / "data")
    assert dk.keys() == dr.keys() and dk == dr


def _bad_inputs(d: Path) -> None:
    good = [{"id": f"g{i}", "text": doc["text"][:3000]} for i, doc in enumerate(sample_docs()[:6:2])]
    other = [doc["text"][:3000] for doc in sample_docs()[10:14:2]]
    lines = [json.dumps(g).encode() for g in good]
    lines += [
        b'{"id": "bad-utf8", "text": "caf\xe9 au lait"}',
        b'{"id": "malformed", "text": "no closing brace"',
        b'{"id": "no-text", "body": "x"}',
        b'{"id": "num-text", "text": 42}',
        b'{"id": "empty", "text": "   \\n  "}',
        b'["not", "an", "object"]',
    ]
    (d / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    big = {"id": "huge", "text": "word " * 10_500_000}  # ~52 MB
    (d / "big.jsonl").write_text(json.dumps(big) + "\n")
    (d / "blob.jsonl").write_bytes(b"\x00\x01\x02binary" * 1000)
    # distinct documents (repetitive ones compress so well that half the file holds no complete line)
    payload = gzip.compress(
        b"\n".join(json.dumps({"id": f"t{i}", "text": doc["text"][:2500] + " variant"}).encode() for i, doc in enumerate(sample_docs()[30:70]))
    )
    (d / "trunc.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    (d / "ok.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(json.dumps({"id": "zst", "text": other[0] + " zst"}).encode() + b"\n"))
    (d / "note.txt").write_text(other[1] + "\nplain text file")
    # the bad-input families: a lone surrogate, a raw NUL line and a BOM in one small file; a parquet file without
    # its text column (each of its rows is counted)
    small = [json.dumps({"id": f"s{i}", "text": doc["text"][:3000] + f" small {i}"}).encode() for i, doc in enumerate(sample_docs()[20:23])]
    (d / "small.jsonl").write_bytes(
        b"\xef\xbb\xbf" + small[0] + b'\r\n{"id": "sur", "text": "\\ud800 x"}\n{"id": "nul", "text": "a\x00"}\n' + b"\n".join(small[1:]) + b"\n"
    )
    import pyarrow as pa

    pq.write_table(pa.table({"body": ["a", "b", "c", "d"]}), d / "nocol.parquet")


def test_bad_inputs_are_counted_not_fatal(ray_session, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _bad_inputs(src)
    cfg = _cfg(tmp_path, f"data.inputs=[{{path: '{src}/*'}}]", "data.clean.enabled=false")
    man = run_data(cfg.data, cfg.paths).as_json()
    rem = pq.read_table(f"{tmp_path}/t/data/removed.parquet").to_pylist()
    reasons = {}
    for r in rem:
        reasons.setdefault(r["reason"], []).append(r)
    for want in (
        "reject:invalid_utf8",
        "reject:malformed_json",
        "reject:missing_text",
        "reject:non_string_text",
        "reject:empty",
        "reject:too_large",
        "reject:binary",
        "reject:truncated",
    ):
        assert want in reasons, (want, sorted(reasons))
        assert all(":" in r["src"] and r["src"].rsplit(":", 1)[1].isdigit() for r in reasons[want])
    assert {r["id"] for r in reasons["reject:invalid_utf8"]} == {f"{src}/mixed.jsonl:4"}  # file and line
    assert any(r["src"].endswith("big.jsonl:1") for r in reasons["reject:too_large"])
    st = man["stats"]
    assert st["docs_in"] == st["docs_kept"] + sum(st["removed"].values())
    kept_text = [s for s in _decode_split(f"{tmp_path}/t/data", "train", load_encoding(TokenizerSpec("cl100k_base")))]
    kept_text += _decode_split(f"{tmp_path}/t/data", "val", load_encoding(TokenizerSpec("cl100k_base")))
    assert any(t.endswith(" zst") for t in kept_text) and any(t.endswith("plain text file") for t in kept_text)
    assert st["docs_kept"] >= 3 + 2  # good lines, zst, txt, and the lines before the gzip truncation
    # the complete lines before the gzip cut are kept, the damaged tail is one row
    assert len([r for r in reasons["reject:truncated"] if "trunc.jsonl.gz" in r["src"]]) == 1
    deduped = [r for r in rem if "trunc.jsonl.gz" in r["src"] and r["reason"] in ("near", "exact")]
    kept_before_cut = [t for t in kept_text if t.endswith(" variant")]
    assert len(deduped) + len(kept_before_cut) >= 15, (len(deduped), len(kept_before_cut))  # not lost with the tail
    assert sum(t.endswith(tuple(f" small {i}" for i in range(3))) for t in kept_text) == 3  # BOM, CRLF: all kept
    assert [r["id"] for r in reasons["reject:invalid_unicode"]] == ["sur"]
    assert any(r["src"].endswith("small.jsonl:3") for r in reasons["reject:binary"])  # the NUL line, not its file
    assert len(reasons["reject:missing_column:text"]) == 4


def test_trained_tokenizer_uint16_and_parquet_input(ray_session, tmp_path):
    import pyarrow as pa

    docs = sample_docs()[:10]
    pq.write_table(pa.table({"content": [d["text"] for d in docs], "doc": [d["id"] for d in docs]}), tmp_path / "in.parquet")
    cfg = _cfg(
        tmp_path,
        f"data.inputs=[{{path: '{tmp_path}/in.parquet', text_field: content, id_field: doc}}]",
        "data.tokenizer={train: {vocab_size: 1024}}",
        "data.output.val_fraction=0.0",
    )
    man = run_data(cfg.data, cfg.paths).as_json()
    root = f"{tmp_path}/t/data"
    assert man["dtype"] == "uint16" and man["tokenizer"]["n_vocab"] == 1024 and man["tokenizer"]["eot"] == 1023
    spec = TokenizerSpec("rustbpe", f"{root}/tokenizer.tiktoken")
    enc = load_encoding(spec)
    assert _decode_split(root, "train", enc) == [normalize(d["text"], cfg.data.clean.normalize) for d in docs]
    # the saved tokenizer is usable as a path source in another run
    cfg2 = _cfg(
        tmp_path,
        "name=t2",
        f"data.inputs=[{{path: '{tmp_path}/in.parquet', text_field: content, id_field: doc}}]",
        f"data.tokenizer={{path: '{root}/tokenizer.tiktoken'}}",
        "data.output.val_fraction=0.0",
    )
    man2 = run_data(cfg2.data, cfg2.paths).as_json()
    assert man2["splits"]["train"]["tokens"] == man["splits"]["train"]["tokens"]
    assert man2["tokenizer"]["sha256"] == man["tokenizer"]["sha256"]


def test_cli_data_end_to_end_with_fsspec_url(ray_session, tmp_path):
    """`raylm data` as a user runs it (connected to the session's Ray), input given as a file:// URL."""
    import ray

    src = tmp_path / "in"
    write_jsonl(src / "a.jsonl", sample_docs()[:4])
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable,
        "-m",
        "raylm",
        "data",
        str(RECIPE),
        "--set",
        f"storage_path={tmp_path}",
        "--set",
        "name=cli",
        "--set",
        f"data.inputs=[{{path: 'file://{src}/*.jsonl'}}]",
        "--set",
        "data.tokenizer={name: cl100k_base}",
    ]
    out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kept" in out.stdout and "MB/s" in out.stdout
    assert re.search(r"\[raylm data\] process: [\d.]+ MB, 4 records read \([\d.]+ MB/s, [\d,]+ docs/s\); removed or skipped: none", out.stdout)
    assert "[raylm data] dedup: 0 duplicates" in out.stdout and "[raylm data] write: 1 shard(s)" in out.stdout
    for internal in ("core_worker", "streaming_executor", "logging_progress", "dataset.py", "WARNING", "INFO"):  # Ray's own lines stay in its logs
        assert internal not in out.stdout + out.stderr, out.stdout + out.stderr
    man = read_manifest(f"{tmp_path}/cli/data").as_json()
    assert man["stats"]["docs_in"] == 4 and man["stats"]["docs_kept"] == 4
    assert (tmp_path / "cli" / "data" / "removed.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "cli" / "data" / "run.json").read_text())["status"] == "succeeded"
    again = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to do" in again.stdout
