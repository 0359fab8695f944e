"""Files a recipe names (tokenizer, decontamination sets, URL blocklists) checked before Ray starts: exit 2,
one line naming the key, the file and a bad record's line; and a full disk, anywhere in a command, as one line
naming the file, with no empty run.json left behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raylm.cluster.provenance import RUN_JSON, read_run_json, recorded, write_run_json
from raylm.core.io import NoSpace, RecordError, no_space, write_atomic
from raylm.core.tokenizer import TokenizerError
from raylm.pipelines.config import DataConfig
from raylm.pipelines.decontaminate import eval_examples
from raylm.pipelines.userfiles import UserFileError, check_data_files
from tests.conftest import ROOT

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # no download can succeed


def _raylm(*argv: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    e.update(PYTHONPATH=str(ROOT), RAY_DATA_DISABLE_PROGRESS_BARS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "raylm", *argv], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def _data(tmp_path, **over) -> DataConfig:
    return DataConfig.model_validate({"tokenizer": {"name": "cl100k_base"}, **over})


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "eval.jsonl").write_text('{"text": "one two three"}\n\n[1, 2]\n')
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9\n")
    (tmp_path / "bad.tiktoken").write_text("IQ== 0\nnot-base64! 1\n")
    (tmp_path / "ok.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    os.mkfifo(tmp_path / "fifo.txt")
    return tmp_path


# ---------------------------------------------------------------- the checks, without Ray
@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"decontaminate": {"files": ["{d}/nope.jsonl"]}}, "data.decontaminate.files[0]: {d}/nope.jsonl: no such file"),
        ({"decontaminate": {"files": ["{d}/eval.jsonl"]}}, "data.decontaminate.files[0]: {d}/eval.jsonl:3: not a JSON object"),
        ({"decontaminate": {"files": ["{d}/ok.jsonl", "{d}/latin1.txt"]}}, "data.decontaminate.files[1]: {d}/latin1.txt:2: not UTF-8"),
        ({"decontaminate": {"files": ["{d}"]}}, "{d}: a directory, not a file"),
        ({"decontaminate": {"files": ["{d}/fifo.txt"]}}, "{d}/fifo.txt: not a regular file"),  # opening it would hang
        ({"url_filter": {"block_urls": ["{d}/latin1.txt"]}}, "data.url_filter.block_urls[0]: {d}/latin1.txt:2: not UTF-8"),
        ({"tokenizer": {"path": "{d}/nope.tiktoken"}}, "data.tokenizer.path: {d}/nope.tiktoken: no such file"),
    ],
)
def test_a_bad_data_file_names_its_key_file_and_line(files, over, needle):
    over = json.loads(json.dumps(over).replace("{d}", str(files)))
    with pytest.raises(UserFileError) as e:
        check_data_files(_data(files, **over))
    assert needle.replace("{d}", str(files)) in str(e.value)


def test_a_bad_tokenizer_file_is_a_tokenizer_error_naming_the_line(files):
    with pytest.raises(TokenizerError, match=r"data.tokenizer.path: cannot read .*bad.tiktoken: line 2 "):
        check_data_files(_data(files, tokenizer={"path": str(files / "bad.tiktoken")}))


def test_good_files_pass(files):
    check_data_files(_data(files, decontaminate={"files": [str(files / "ok.jsonl")]}, url_filter={"block_domains": [str(files / "ok.jsonl")]}))


@given(st.lists(st.dictionaries(st.sampled_from(["text", "prompt", "completion", "id"]), st.text(max_size=20)), max_size=8), st.data())
def test_readers_name_the_first_bad_line_and_yield_every_record_before_it(records, data):
    """Property: a JSON Lines file with one record that is not an object at any place: the decontamination
    reader yields every record before it, then fails naming its line."""
    import tempfile

    at = data.draw(st.integers(0, len(records)))
    bad = data.draw(st.sampled_from(["[1]", "5", '"text"', "{oops", "null"]))
    lines = [json.dumps(r) for r in records[:at]] + [bad] + [json.dumps(r) for r in records[at:]]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        got = []
        with pytest.raises(RecordError) as e:
            for example in eval_examples(path):
                got.append(example)
        assert e.value.line == at + 1
        assert [n for n, _ in got] == list(range(1, at + 1))


# ---------------------------------------------------------------- the CLI: exit 2, one line, before Ray
def _one_line_before_ray(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert all(n in out.stderr for n in needles), out.stderr
    assert "ray: started" not in out.stdout and "Traceback" not in out.stderr, out.stdout + out.stderr


def test_cli_missing_decontamination_file(tmp_path):
    out = _raylm("data", RECIPE, "--set", f"storage_path={tmp_path}", "--set", f"data.decontaminate.files=[{tmp_path}/evals.jsonl]")
    _one_line_before_ray(out, "data.decontaminate.files[0]", f"{tmp_path}/evals.jsonl", "no such file")


def test_cli_malformed_decontamination_record(files):
    out = _raylm("run", RECIPE, "--set", f"storage_path={files}", "--set", f"data.decontaminate.files=[{files}/eval.jsonl]")
    _one_line_before_ray(out, "data.decontaminate.files[0]", f"{files}/eval.jsonl:3", "not a JSON object")


def test_cli_bad_tokenizer_path(files):
    out = _raylm("data", RECIPE, "--set", f"storage_path={files}", "--set", f"data.tokenizer={{path: {files}/bad.tiktoken}}")
    _one_line_before_ray(out, "data.tokenizer.path", f"{files}/bad.tiktoken", "line 2")


def test_cli_tokenizer_name_not_available_offline(tmp_path):
    out = _raylm("data", RECIPE, "--set", f"storage_path={tmp_path}", "--set", "data.tokenizer={name: r50k_base}", env=OFFLINE)
    _one_line_before_ray(out, "data.tokenizer.name", "'r50k_base' is not available offline")


@pytest.mark.parametrize("command", ["run", "tune"])
def test_cli_missing_init_from_before_the_data_stage(files, command):
    """`run` and `tune` check train.init_from before Ray starts, not after building the data."""
    recipe = RECIPE if command == "run" else str(ROOT / "cluster" / "recipes" / "tune-local.yaml")
    sets = [f"storage_path={files}/runs", f"data.inputs=[{{path: {files}/ok.jsonl}}]", f"train.init_from={files}/pretrained"]
    out = _raylm(command, recipe, *[x for s in sets for x in ("--set", s)])
    _one_line_before_ray(out, "train.init_from", f"{files}/pretrained", "no checkpoint")


# ---------------------------------------------------------------- a full disk
def test_no_space_is_found_behind_causes_and_in_a_worker_errors_text():
    try:
        try:
            with open("/dev/full", "w") as f:
                f.write("x")
        except OSError as e:
            raise RuntimeError("the task failed") from e
    except RuntimeError as e:
        assert no_space(e) == ""  # a write to an open file names no file
    text = RuntimeError("ray::task()\nOSError: [Errno 28] No space left on device: '/runs/r/data/x.tmp'\n")
    assert no_space(text) == "/runs/r/data/x.tmp"
    assert no_space(OSError(errno.ENOENT, "No such file or directory", "/x")) is None


def test_recorded_names_the_stage_directory_when_the_full_disk_names_no_file(tmp_path):
    d = str(tmp_path / "r" / "data")
    with pytest.raises(NoSpace) as e, recorded(d, "data", {}, at_start=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert no_space(e.value) == d and read_run_json(d)["status"] == "failed"


@pytest.fixture()
def small_disk(tmp_path, request):
    """A tmpfs of `request.param` (e.g. "1m") at tmp_path/disk: a real full disk (root only; skipped otherwise)."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={getattr(request, 'param', '1m')}", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d) -> None:
    with open(d / "filler", "wb", buffering=0) as f, pytest.raises(OSError) as e:
        while True:
            f.write(b"\0" * 4096)
    assert e.value.errno == errno.ENOSPC


def test_a_failed_run_json_write_keeps_the_previous_one(small_disk):
    stage = str(small_disk / "r" / "train")
    write_run_json(stage, {"status": "running"})
    _fill(small_disk)
    with pytest.raises(OSError) as e:
        write_run_json(stage, {"status": "succeeded", "pad": "x" * 100_000})
    assert no_space(e.value) == f"{stage}/{RUN_JSON}"
    assert read_run_json(stage) == {"status": "running"}
    assert sorted(os.listdir(stage)) == [RUN_JSON]  # no temporary file left


def test_write_atomic_leaves_no_empty_file(small_disk):
    _fill(small_disk)
    with pytest.raises(OSError):
        write_atomic(str(small_disk / "stats.json"), "x" * 100_000)
    assert sorted(os.listdir(small_disk)) == ["filler"]


@pytest.mark.slow
@pytest.mark.own_ray
@pytest.mark.parametrize("small_disk", ["8m"], indirect=True)
def test_disk_full_during_tokenize_is_one_line(small_disk):
    """The sample's staging files fit in 8 MB and its 2.7M cl100k tokens (10.8 MB) do not: the disk fills in
    the tokenize stage, in every task at once."""
    out = _raylm(
        "data",
        RECIPE,
        "--set",
        f"storage_path={small_disk}",
        "--set",
        "name=full",
        "--set",
        "data.tokenizer={name: cl100k_base}",
        "--set",
        "data.dedup.minhash.enabled=false",
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "tokenize:" in out.stdout, out.stdout  # it got there: the stages before fit
    assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr[-3000:]  # no "Unhandled error", no traceback
    assert out.stderr.startswith(f"raylm: no space left on device writing {small_disk}/full/data/"), out.stderr
    run_json = small_disk / "full" / "data" / RUN_JSON
    assert not run_json.exists() or json.loads(run_json.read_text())["status"] == "failed"
