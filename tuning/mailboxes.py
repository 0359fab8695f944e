"""The messages of a campaign, in one zero-CPU actor for the whole campaign.

A campaign's driver, its trials' Tune functions, their Ray Train controllers and rank-0 workers pass messages:
each trial's placement groups to the driver (tuning/reservations.py), each report's acknowledgement to the
workers (AckReports), each PBT report with its checkpoint to the trial's function (ForwardReports). Each goes
through a box (a FIFO) of its own key in the campaign's `Mailboxes`; so does the driver's word that the campaign
was interrupted (INTERRUPTED), which holds back a trial whose workers start after it (reservations.py). A
`ray.util.queue.Queue` per box would start an actor process per trial (~1.3 s of CPU on a 2-core machine, beside
the ~20 s a Ray Train run costs).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import ray


class Boxes:
    """FIFO boxes by key, the Mailboxes actor's state (asyncio: a `get` waiting on one box holds up no other)."""

    def __init__(self) -> None:
        self._boxes: dict[str, asyncio.Queue] = {}

    def _box(self, key: str) -> asyncio.Queue:
        return self._boxes.setdefault(key, asyncio.Queue())

    async def put(self, key: str, item: Any) -> None:
        self._box(key).put_nowait(item)

    async def get(self, key: str, timeout: float | None = None) -> list:
        """[the box's next item], waiting for one; [] once `timeout` seconds pass without one."""
        try:
            return [await asyncio.wait_for(self._box(key).get(), timeout)]
        except asyncio.TimeoutError:
            return []

    async def take_all(self, key: str) -> list:
        """Every item in the box now, oldest first, waiting for none."""
        box, items = self._box(key), []
        while not box.empty():
            items.append(box.get_nowait())
        return items

    async def count(self, key: str) -> int:
        return self._box(key).qsize()

    async def drop(self, key: str) -> None:
        self._boxes.pop(key, None)


Mailboxes = ray.remote(num_cpus=0)(Boxes)


@dataclass(frozen=True)
class Box:
    """One box of a campaign's Mailboxes, picklable to any process of the campaign. `new` gives a key of its own
    (a trial's Ray Train run, whose leftover messages no later run of the trial must read)."""

    mail: Any  # the Mailboxes actor's handle
    key: str

    def new(self, prefix: str) -> Box:
        return Box(self.mail, f"{prefix}/{uuid.uuid4().hex}")

    def at(self, key: str) -> Box:
        """The box of `key` in the same mailboxes (a campaign-wide one, such as INTERRUPTED)."""
        return Box(self.mail, key)

    def put(self, item: Any) -> None:
        """Returns once the item is in the box: a message put before a run ends is there when it has ended."""
        ray.get(self.mail.put.remote(self.key, item))

    def get(self, timeout: float | None = None) -> list:
        return ray.get(self.mail.get.remote(self.key, timeout))

    def take_all(self) -> list:
        return ray.get(self.mail.take_all.remote(self.key))

    def count(self) -> int:
        return ray.get(self.mail.count.remote(self.key))

    def drop(self) -> None:
        self.mail.drop.remote(self.key)


# A campaign-wide box: one item in it once the campaign's driver was interrupted (Ctrl-C, SIGTERM)
INTERRUPTED = "interrupted"


def open_mailboxes() -> Box:
    """A campaign's Mailboxes (an actor of this driver's, gone with it) and its first box: the placement groups'."""
    return Box(Mailboxes.remote(), "placement-groups")
