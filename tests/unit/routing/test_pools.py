"""Pools: the balancer's order, the ejection cap, the concurrency cap and its bounded
queue, the model router's policies, and the invariants under generated histories:
a request never goes to a node without its model, nor to one not healthy, and no more
than the cap of a pool is ever ejected at once."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaygate.errors import NodeBusy
from relaygate.providers.mock import MockProvider
from relaygate.routing.discovery import HttpMember
from relaygate.routing.health import Health
from relaygate.routing.pools import Inventory, Node, Pool, ejection_cap
from relaygate.routing.router import Deployment, Model, Router
from relaygate.settings import EjectionConfig, NodeConfig, PoolConfig, RoutingConfig, Timeouts

ROUTING = RoutingConfig()
MODELS = ("a", "b", "c")


class Member:
    """A pool member that is never called over the network in these tests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.provider = MockProvider()
        self.address = f"test://{name}"

    async def discover(self) -> Inventory:
        raise AssertionError("not probed here")

    async def aclose(self) -> None:
        return None


def make_pool(
    count: int,
    *,
    percent: int = 50,
    failures: int = 2,
    balance: str = "least_loaded",
    cap: int = 2,
    queue: int = 1,
    queue_timeout: float = 30.0,
) -> Pool:
    config = PoolConfig(
        nodes=[NodeConfig(base_url="http://127.0.0.1:1")],
        balance=balance,  # type: ignore[arg-type]
        max_concurrency=cap,
        max_queue=queue,
        queue_timeout=queue_timeout,
        ejection=EjectionConfig(
            consecutive_failures=failures, base_ejection_time=5, max_ejection_percent=percent
        ),
    )
    pool = Pool("p", config, ROUTING)
    for i in range(count):
        pool.add(Member(f"n{i}"))
    return pool


def healthy(pool: Pool, node: Node, models: set[str]) -> None:
    pool.probed(node, Inventory(frozenset(models)), "", time.monotonic())


def test_loaded_first_then_least_loaded_weighted_by_speed() -> None:
    pool = make_pool(3)
    n0, n1, n2 = pool.nodes
    for node in pool.nodes:
        healthy(pool, node, {"a"})
    n2.loaded = frozenset({"a"})
    assert pool.order("a")[0] is n2
    n2.in_flight = n2.max_concurrency  # full: a free node comes first, loaded or not
    n0.ewma_ttft, n1.ewma_ttft = 2.0, 0.5
    assert [n.name for n in pool.order("a")] == ["n1", "n0", "n2"]
    n1.in_flight = 1  # (1 + 1) * 0.5 = 1.0 < 2.0
    assert pool.order("a")[0] is n1
    n1.ewma_ttft = 1.5  # (1 + 1) * 1.5 = 3.0 > 2.0
    assert pool.order("a")[0] is n0


def test_weighted_round_robin_shares_by_weight() -> None:
    pool = make_pool(2, balance="round_robin")
    pool.nodes[0].weight = 3.0
    for node in pool.nodes:
        healthy(pool, node, {"a"})
    picks = [pool.order("a")[0].name for _ in range(8)]
    assert picks.count("n0") == 6 and picks.count("n1") == 2


def test_ejection_grows_on_repeats_and_a_probe_readmits_after_the_cool_down() -> None:
    pool = make_pool(2, failures=2)
    node = pool.nodes[0]
    for n in pool.nodes:
        healthy(pool, n, {"a"})
    now = time.monotonic()
    node.health.record_failure(now, "x", kind="connect")
    assert node.state == "healthy"
    node.health.record_failure(now, "x", kind="connect")
    assert node.state == "ejected" and node.health.cooldown_until == pytest.approx(now + 5)
    healthy(pool, node, {"a"})  # a good probe during the cool-down does not re-admit
    assert node.state == "ejected" and pool.order("a") == [pool.nodes[1]]
    pool.probed(node, Inventory(frozenset({"a"})), "", now + 6)
    assert node.state == "healthy" and node.health.failures == 0
    for _ in range(2):
        node.health.record_failure(now + 6, "x", kind="connect")
    assert node.health.cooldown_until == pytest.approx(now + 6 + 10)  # twice as long
    pool.probed(node, Inventory(frozenset({"a"})), "", now + 17)  # back in
    assert (node.state, node.health.ejections) == ("healthy", 2)
    pool.probed(node, Inventory(frozenset({"a"})), "", now + 21)  # in for 5 s: decays
    assert node.health.ejections == 1


def test_the_ejection_cap_holds_even_when_every_node_fails() -> None:
    pool = make_pool(4, percent=50, failures=1)
    for node in pool.nodes:
        healthy(pool, node, {"a"})
    for node in pool.nodes:
        node.health.record_failure(time.monotonic(), "x", kind="status_5xx")
    assert pool.ejected() == 2
    kept = [n for n in pool.nodes if n.state == "healthy"]
    assert len(kept) == 2 and all("max_ejection_percent" in n.reason for n in kept)


@pytest.mark.parametrize(
    ("size", "percent", "cap"), [(1, 50, 1), (4, 50, 2), (5, 50, 2), (10, 10, 1), (3, 0, 0)]
)
def test_ejection_cap(size: int, percent: int, cap: int) -> None:
    assert ejection_cap(size, percent) == cap


async def test_a_full_queue_is_refused_at_once_and_a_freed_slot_goes_to_the_queue() -> None:
    pool = make_pool(1, cap=1, queue=1)
    node = pool.nodes[0]
    await pool.acquire(node)
    waiting = asyncio.ensure_future(pool.acquire(node))
    await asyncio.sleep(0)
    assert node.queued == 1
    with pytest.raises(NodeBusy) as busy:
        await pool.acquire(node)
    assert busy.value.status == 503 and not busy.value.counts_against_health
    pool.release(node)  # handed to the waiter
    await waiting
    assert (node.in_flight, node.queued) == (1, 0)
    pool.release(node)
    assert node.in_flight == 0


async def test_a_wait_longer_than_queue_timeout_is_refused() -> None:
    pool = make_pool(1, cap=1, queue=1, queue_timeout=0.05)
    node = pool.nodes[0]
    await pool.acquire(node)
    with pytest.raises(NodeBusy, match="stayed busy"):
        await pool.acquire(node)
    assert (node.in_flight, node.queued) == (1, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    pool = make_pool(1, cap=1, queue=2)
    node = pool.nodes[0]
    await pool.acquire(node)
    waiting = asyncio.ensure_future(pool.acquire(node))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert node.queued == 0
    pool.release(node)
    assert node.in_flight == 0


async def test_a_member_that_leaves_sends_its_queue_elsewhere_at_once() -> None:
    pool = make_pool(2, cap=1, queue=4)
    gone, kept = pool.nodes
    for node in pool.nodes:
        healthy(pool, node, {"a"})
    changes: list[Pool] = []
    pool.on_change.append(changes.append)
    await pool.acquire(gone)
    waiting = asyncio.ensure_future(pool.acquire(gone))
    await asyncio.sleep(0)
    assert pool.remove("n0", "lost its connection") is gone
    with pytest.raises(NodeBusy, match="lost its connection"):
        await waiting
    assert pool.order("a") == [kept] and changes == [pool]
    assert (gone.state, gone.queued, gone.in_flight) == ("down", 0, 1)
    pool.release(gone)  # the request that was running ends
    assert gone.in_flight == 0 and pool.remove("n0") is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cret@10.0.0.2:11434/", "http://10.0.0.2:11434"),
        ("https://gpu.example.com/v1", "https://gpu.example.com"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_a_node_address_never_shows_credentials(url: str, shown: str) -> None:
    assert HttpMember("n", "ollama", url, MockProvider()).address == shown


# -- the model router ---------------------------------------------------------------------


def deployment(name: str, provider: str = "openai") -> Deployment:
    return Deployment(
        name=name, model=name, provider=MockProvider(), provider_name=provider,
        upstream_model=name, weight=1, timeouts=Timeouts(), health=Health(ROUTING),
    )  # fmt: skip


def virtual_router(policy: str) -> tuple[Router, dict[str, Deployment]]:
    deps = {
        n: deployment(n, "ollama" if n == "local" else "openai") for n in ("big", "small", "local")
    }
    models = [Model(n, [d]) for n, d in deps.items()]
    models.append(Model("v", [], ["big", "small", "local"], policy=policy))
    return Router(models, ROUTING, prices={"big": 12.5, "small": 0.75, "local": 0.0}), deps


def test_cheapest_healthy_member_first() -> None:
    router, deps = virtual_router("cheapest")
    assert [d.name for d in router.plan("v")] == ["local", "small", "big"]
    for _ in range(ROUTING.failure_threshold):
        deps["local"].health.record_failure(time.monotonic(), "x")
    assert [d.name for d in router.plan("v")] == ["small", "big"]


def test_fastest_member_first_unmeasured_ones_get_measured() -> None:
    router, deps = virtual_router("fastest")
    deps["big"].latency, deps["small"].latency = 0.2, 0.9
    assert next(router.plan("v")).name == "local"  # never measured
    deps["local"].latency = 1.5
    assert [d.name for d in router.plan("v")] == ["big", "small", "local"]


def test_local_first_then_configured_order() -> None:
    router, _ = virtual_router("local_first")
    assert [d.name for d in router.plan("v")] == ["local", "big", "small"]


def test_preference_order_is_kept() -> None:
    a, b, c = deployment("a"), deployment("b"), deployment("c")
    router = Router([Model("m", [a, b, c], order="preference")], ROUTING)
    for _ in range(20):
        assert [d.name for d in router.plan("m")] == ["a", "b", "c"]


# -- invariants under generated histories -----------------------------------------------

EVENT = st.one_of(
    st.tuples(st.just("probe"), st.integers(0, 5), st.sets(st.sampled_from(MODELS))),
    st.tuples(st.just("down"), st.integers(0, 5), st.none()),
    st.tuples(st.just("fail"), st.integers(0, 5), st.none()),
    st.tuples(st.just("ok"), st.integers(0, 5), st.none()),
    st.tuples(st.just("busy"), st.integers(0, 5), st.integers(0, 3)),
    st.tuples(st.just("later"), st.integers(0, 5), st.floats(0, 20)),
)


@given(
    size=st.integers(1, 6),
    percent=st.integers(0, 100),
    failures=st.integers(1, 3),
    balance=st.sampled_from(["least_loaded", "round_robin"]),
    events=st.lists(EVENT, max_size=60),
)
def test_never_a_node_without_the_model_never_more_ejected_than_the_cap(
    size: int, percent: int, failures: int, balance: str, events: list[tuple[str, int, object]]
) -> None:
    pool = make_pool(size, percent=percent, failures=failures, balance=balance)
    cap = ejection_cap(size, percent)
    clock = 1000.0
    for kind, index, arg in events:
        node = pool.nodes[index % size]
        if kind == "probe":
            assert isinstance(arg, set)
            pool.probed(node, Inventory(frozenset(arg), frozenset(list(arg)[:1])), "", clock)
        elif kind == "down":
            pool.probed(node, None, "probe failed: connect", clock)
        elif kind == "fail":
            node.health.record_failure(clock, "x", kind="connect")
        elif kind == "ok":
            node.health.record_success()
        elif kind == "busy":
            assert isinstance(arg, int)
            node.in_flight = min(arg, node.max_concurrency)
        else:
            assert isinstance(arg, float)
            clock += arg
        assert pool.ejected() <= cap
        for model in (*MODELS, "unknown"):
            chosen = pool.order(model)
            assert all(model in n.models and n.state == "healthy" for n in chosen)
            assert len({id(n) for n in chosen}) == len(chosen)  # each node once
            expected = {id(n) for n in pool.nodes if n.state == "healthy" and model in n.models}
            assert {id(n) for n in chosen} == expected  # and every such node is a candidate


_NAME = st.from_regex(r"[a-z][a-z0-9.\-]{0,15}(/[a-z][a-z0-9.\-]{0,15})?", fullmatch=True)
_TAG = st.from_regex(r"[a-z0-9][a-z0-9._\-]{0,10}", fullmatch=True)


@given(name=_NAME, tag=st.none() | _TAG)
def test_an_ollama_pool_finds_a_model_named_with_or_without_its_latest_tag(
    name: str, tag: str | None
) -> None:
    """Ollama's /api/tags lists ``mistral`` as ``mistral:latest`` and answers to both: a
    deployment naming either reaches the node; another tag is another model."""
    pool = make_pool(1)
    listed = f"{name}:{tag or 'latest'}"
    healthy(pool, pool.nodes[0], {listed})
    assert pool.has(listed) and pool.order(listed) == pool.nodes
    assert pool.has(name) is (tag in (None, "latest"))
    assert pool.has(f"{name}:other-{tag}") is False
    openai = Pool("o", msgspec.structs.replace(pool.config, provider="openai"), ROUTING)
    openai.add(Member("v"))
    healthy(openai, openai.nodes[0], {name})  # vLLM and the like: names are exact
    assert openai.has(name) and not openai.has(f"{name}:latest")
