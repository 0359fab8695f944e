"""The one way a stage records what it did: counts and seconds by name (datatrove's PipelineStep keeps
its stats the same way), summed across blocks and workers, and written to stats.json."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Stats:
    seconds: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)  # what is no count: lists a stage reports (paragraphs: the most repeated)

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Adds the seconds spent inside the block to `name`."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t

    def add(self, seconds: dict[str, float] | None = None, counts: dict[str, int] | None = None) -> None:
        """Adds another worker's seconds and counts (a task's, returned with its block)."""
        self.seconds.update(seconds or {})
        self.counts.update(counts or {})

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "seconds": self.rounded(), **self.extra}
