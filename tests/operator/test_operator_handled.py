"""Which watch events reconcile an object (:class:`modelfleet.operator.handlers.Handled`):
its first sight and changes of its spec, labels or annotations, not the operator's own
status writes; a failed reconcile is not remembered."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from modelfleet.operator.handlers import Handled

pytestmark = pytest.mark.unit

KEY = ("ModelPool", "ns", "p")


def pool(generation: int, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "generation": generation, "resourceVersion": "1", **meta},
        "status": {"observedGeneration": generation - 1},
    }


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as ex:
        yield ex


def test_reconciles_on_first_sight_and_on_changes_only(executor: ThreadPoolExecutor) -> None:
    handled = Handled(executor)
    runs: list[int] = []

    def events(objects: list[dict[str, Any]]) -> None:
        async def go() -> None:
            for obj in objects:
                await handled.run_if_changed(
                    KEY, obj, lambda o=obj: runs.append(o["metadata"]["generation"])
                )

        asyncio.run(go())

    events([pool(1)])  # first sight (created, or seen once after a start)
    assert runs == [1]
    own_write = pool(1, resourceVersion="2")
    own_write["status"] = {"observedGeneration": 1, "conditions": []}
    events([own_write])  # the operator's status write: no change
    assert runs == [1]
    events([pool(2)])  # a spec change bumps the generation
    events([pool(2, labels={"team": "a"})])
    events([pool(2, labels={"team": "a"}, annotations={"note": "x"})])
    events(
        [
            pool(
                2,
                labels={"team": "a"},
                annotations={"note": "x", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
            )
        ]
    )  # kubectl's bookkeeping is no change
    assert runs == [1, 2, 2, 2]
    handled.forget(KEY)  # deleted: a new object of the same name is a first sight
    events([pool(1)])
    assert runs == [1, 2, 2, 2, 1]


def test_a_failed_reconcile_runs_again_on_the_next_event(executor: ThreadPoolExecutor) -> None:
    handled = Handled(executor)
    calls: list[str] = []

    def fail() -> None:
        calls.append("fail")
        raise RuntimeError("API down")

    async def go() -> None:
        await handled.run_if_changed(KEY, pool(1), fail)
        await handled.run_if_changed(KEY, pool(1), lambda: calls.append("ok"))
        await handled.run_if_changed(KEY, pool(1), lambda: calls.append("again"))

    asyncio.run(go())
    assert calls == ["fail", "ok"]
