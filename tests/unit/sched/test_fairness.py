"""Fair ready queue: priority first, weighted round robin across (tenant, campaign) flows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mta_engine.sched.fairness import FairQueue


def test_small_campaign_is_not_starved_by_a_huge_one() -> None:
    """A 10-job campaign pushed after a 10,000-job one finishes within the first 20 pops."""
    q: FairQueue[tuple[str, int]] = FairQueue()
    for i in range(10_000):
        q.push(("big", i), priority=0, tenant="t1", campaign="big")
    for i in range(10):
        q.push(("small", i), priority=0, tenant="t2", campaign="small")
    first = [q.pop() for _ in range(20)]
    assert [j for j in first if j and j[0] == "small"] == [("small", i) for i in range(10)]
    assert len(q) == 9_990


def test_higher_priority_always_first() -> None:
    """Priority 9 jobs come before any priority 0 job, even when pushed later."""
    q: FairQueue[str] = FairQueue()
    for i in range(50):
        q.push(f"p0-{i}", priority=0, tenant="a", campaign=i % 3)
    for i in range(5):
        q.push(f"p9-{i}", priority=9, tenant="b", campaign="urgent")
    out = [q.pop() for _ in range(55)]
    assert out[:5] == [f"p9-{i}" for i in range(5)]
    assert q.pop() is None and len(q) == 0


def test_weights_share_in_proportion() -> None:
    """A weight-3 flow gets three jobs for each of a weight-1 flow's."""
    q: FairQueue[str] = FairQueue()
    for i in range(100):
        q.push("heavy", tenant="t", campaign="heavy", weight=3)
        q.push("light", tenant="t", campaign="light", weight=1)
    out = [q.pop() for _ in range(40)]
    assert out.count("heavy") == 30 and out.count("light") == 10


def test_fractional_weights_save_up() -> None:
    """A weight-0.5 flow is served every other round."""
    q: FairQueue[str] = FairQueue()
    for _ in range(20):
        q.push("a", campaign="a", weight=1)
        q.push("b", campaign="b", weight=0.5)
    out = "".join(q.pop() or "" for _ in range(12))
    assert out.count("a") == 8 and out.count("b") == 4


def test_remove_where_takes_out_a_suspended_tenant() -> None:
    """remove_where returns the matching jobs in queue order and leaves the rest fair."""
    q: FairQueue[tuple[str, int]] = FairQueue()
    for i in range(3):
        q.push(("x", i), priority=1, tenant="x", campaign="c")
        q.push(("y", i), priority=1, tenant="y", campaign="c")
        q.push(("x", 10 + i), priority=0, tenant="x", campaign="c")
    assert repr(q) == "<FairQueue jobs=9 priorities={1: flows=2 jobs=6, 0: flows=1 jobs=3}>"
    gone = q.remove_where(lambda j: j[0] == "x")
    assert gone == [("x", 0), ("x", 1), ("x", 2), ("x", 10), ("x", 11), ("x", 12)]
    assert repr(q) == "<FairQueue jobs=3 priorities={1: flows=1 jobs=3}>"
    assert q.flows() == {1: {("y", "c"): 3}}
    assert [q.pop() for _ in range(4)] == [("y", 0), ("y", 1), ("y", 2), None]


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(1, 3)), max_size=200))
def test_pop_order_respects_priority_and_loses_nothing(pushes: list[tuple[int, int, int]]) -> None:
    """Every pushed job comes out once, priorities never increase, FIFO holds within a flow."""
    q: FairQueue[tuple[int, int, int]] = FairQueue()
    for n, (prio, flow, weight) in enumerate(pushes):
        q.push((prio, flow, n), priority=prio, campaign=flow, weight=weight)
    out = []
    while (job := q.pop()) is not None:
        out.append(job)
    assert sorted(out, key=lambda j: j[2]) == [(p, f, n) for n, (p, f, _) in enumerate(pushes)]
    assert [j[0] for j in out] == sorted((j[0] for j in out), reverse=True)
    for prio in range(4):
        for flow in range(5):
            seq = [j[2] for j in out if j[0] == prio and j[1] == flow]
            assert seq == sorted(seq)
