"""The downstream task file: JSON lines, a header line `{"task": {...}}` then one example per line (multiple choice
or cloze). Written by the builders (pipelines/downstream.py, or a user's own), read and scored by training/tasks.py.
A line that is not an example is counted by reason, never an error; a first line that is not a header is."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from raylm.core.schema import Strict

Kind = Literal["multiple_choice", "cloze"]


class TaskFileError(ValueError):
    """A task file whose header is not one, or a directory without task files: the CLI exits 2."""


class TaskHeader(Strict):
    # a metric key (tasks/<name>/acc in TensorBoard, MLflow, W&B, tune.metric): letters, digits, - _ .
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Kind
    fewshot: str = ""  # a fixed prefix put before every context
    built_by: str = ""  # the command or script that made the file, and from what
    random_baseline: float | None = Field(default=None, ge=0, le=1)  # null: from the examples (mean 1 / choices)


class MultipleChoice(Strict):
    context: str
    choices: list[str] = Field(min_length=2, max_length=1000)
    gold: int = Field(ge=0, le=999)

    @model_validator(mode="after")
    def _valid(self) -> MultipleChoice:
        if any(not c for c in self.choices):
            raise ValueError("an empty choice")
        if self.gold >= len(self.choices):
            raise ValueError(f"gold {self.gold} is out of range for {len(self.choices)} choices")
        return self

    @property
    def continuations(self) -> list[str]:
        """What is scored after the context: each choice."""
        return self.choices


class Cloze(Strict):
    context: str
    continuation: str = Field(min_length=1)

    @property
    def continuations(self) -> list[str]:
        """What is scored after the context: the continuation."""
        return [self.continuation]


@dataclass
class Task:
    header: TaskHeader
    examples: list[MultipleChoice | Cloze]
    skipped: Counter = field(default_factory=Counter)  # reason -> lines not taken

    @property
    def baseline(self) -> float:
        """The accuracy of guessing: the header's, else the mean of 1 / choices (0 for cloze)."""
        if self.header.random_baseline is not None:
            return self.header.random_baseline
        if self.header.kind == "cloze" or not self.examples:
            return 0.0
        return sum(1 / len(e.choices) for e in self.examples) / len(self.examples)


def _reason(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def read_task(path: str) -> Task:
    """The task file at `path` (FileNotFoundError when there is none); a header that is not one is a TaskFileError
    naming the file; bad example lines are counted in `skipped` by reason."""
    import fsspec

    with fsspec.open(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    try:
        header = TaskHeader.model_validate(json.loads(lines[0])["task"])
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise TaskFileError(f'{path}: line 1 is not a task header ({{"task": {{"name": ..., "kind": ...}}}}): {e}') from None
    model = MultipleChoice if header.kind == "multiple_choice" else Cloze
    task = Task(header, [])
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            task.examples.append(model.model_validate(json.loads(line)))
        except json.JSONDecodeError:
            task.skipped["not JSON"] += 1
        except ValidationError as e:
            task.skipped[_reason(e)] += 1
    return task


def write_task(path: str, header: TaskHeader, examples: list[MultipleChoice | Cloze]) -> None:
    """A task file: the header line, then the examples, one per line (UTF-8, written whole or not at all)."""
    from raylm.core.io import write_atomic

    lines = [json.dumps({"task": header.model_dump(mode="json")}, ensure_ascii=False)]
    lines += [json.dumps(e.model_dump(mode="json"), ensure_ascii=False) for e in examples]
    write_atomic(path, "\n".join(lines) + "\n")
