"""A campaign's mailboxes (tuning/mailboxes.py): the actor's boxes as plain asyncio, without Ray."""

import asyncio

from raylm.tuning.mailboxes import Boxes


def _run(coro):
    return asyncio.run(coro)


def test_a_box_gives_its_items_oldest_first():
    async def go():
        b = Boxes()
        for i in range(3):
            await b.put("k", i)
        return [await b.get("k") for _ in range(3)]

    assert _run(go()) == [[0], [1], [2]]


def test_an_empty_box_gives_nothing_once_the_timeout_passes():
    async def go():
        return await Boxes().get("k", timeout=0.05)

    assert _run(go()) == []


def test_boxes_of_other_keys_are_apart():
    async def go():
        b = Boxes()
        await b.put("a", 1)
        return await b.get("b", timeout=0.05), await b.get("a", timeout=0.05)

    assert _run(go()) == ([], [1])


def test_a_waiting_get_takes_an_item_put_while_it_waits():
    async def go():
        b = Boxes()
        waiting = asyncio.ensure_future(b.get("k"))
        await asyncio.sleep(0.01)
        await b.put("k", "late")
        return await waiting

    assert _run(go()) == ["late"]


def test_take_all_empties_the_box_without_waiting():
    async def go():
        b = Boxes()
        await b.put("k", 1)
        await b.put("k", 2)
        return await b.take_all("k"), await b.take_all("k")

    assert _run(go()) == ([1, 2], [])


def test_a_dropped_box_is_empty_when_used_again():
    async def go():
        b = Boxes()
        await b.put("k", 1)
        await b.drop("k")
        return await b.get("k", timeout=0.05)

    assert _run(go()) == []


def test_count_is_the_number_of_items_waiting():
    async def go():
        b = Boxes()
        before = await b.count("k")
        await b.put("k", 1)
        await b.put("k", 2)
        return before, await b.count("k")

    assert _run(go()) == (0, 2)
