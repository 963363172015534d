from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from core.upstream.balancer import Balancer, LeastRequest, RoundRobin, Weighted, make_balancer
from core.upstream.upstream import Endpoint


def endpoints(*weights: int) -> list[Endpoint]:
    return [
        Endpoint(chr(ord("a") + i), "10.0.0.1", 8000 + i, weight=w) for i, w in enumerate(weights)
    ]


def keys(balancer: Balancer[Endpoint], n: int, exclude: Sequence[str] = ()) -> list[str]:
    picks = [balancer.pick(exclude) for _ in range(n)]
    return [ep.key for ep in picks if ep is not None]


def rotations(seq: list[str]) -> list[list[str]]:
    return [seq[i:] + seq[:i] for i in range(len(seq))]


@pytest.mark.parametrize("cls", [RoundRobin, LeastRequest, Weighted])
def test_empty_balancer_picks_nothing(cls: type[Balancer[Endpoint]]) -> None:
    balancer = cls(random.Random(1))
    assert balancer.pick() is None
    balancer.set_endpoints(endpoints(1))
    balancer.set_endpoints([])
    assert balancer.pick() is None
    assert balancer.pick({"a"}) is None


@pytest.mark.parametrize("cls", [RoundRobin, LeastRequest, Weighted])
def test_excluded_endpoint_is_avoided_while_another_exists(cls: type[Balancer[Endpoint]]) -> None:
    balancer = cls(random.Random(2))
    balancer.set_endpoints(endpoints(1, 1, 1))
    for _ in range(50):
        assert set(keys(balancer, 1, exclude=["a"])) <= {"b", "c"}
        assert keys(balancer, 1, exclude=["a", "c"]) == ["b"]
        keys(balancer, 1)


@pytest.mark.parametrize("cls", [RoundRobin, LeastRequest, Weighted])
def test_excluding_every_endpoint_still_picks_one(cls: type[Balancer[Endpoint]]) -> None:
    balancer = cls(random.Random(3))
    balancer.set_endpoints(endpoints(1, 1))
    assert set(keys(balancer, 100, exclude=["a", "b"])) <= {"a", "b"}
    assert len(keys(balancer, 100, exclude=["a", "b"])) == 100


def test_make_balancer_by_name() -> None:
    assert isinstance(make_balancer("round_robin"), RoundRobin)
    assert isinstance(make_balancer("least_request"), LeastRequest)
    assert isinstance(make_balancer("weighted"), Weighted)
    with pytest.raises(KeyError):
        make_balancer("random")


# -- round robin ------------------------------------------------------------------


def test_round_robin_serves_each_in_turn() -> None:
    balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(4))
    balancer.set_endpoints(endpoints(1, 1, 1))
    picks = keys(balancer, 9)
    assert picks[:3] in rotations(["a", "b", "c"])
    assert picks[3:6] == picks[:3] == picks[6:]


def test_round_robin_is_even_and_ignores_weights() -> None:
    balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(5))
    balancer.set_endpoints(endpoints(1, 5, 1, 2))
    assert Counter(keys(balancer, 400)) == {"a": 100, "b": 100, "c": 100, "d": 100}


def test_round_robin_starts_at_a_random_endpoint() -> None:
    starts = set()
    for seed in range(20):
        balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(seed))
        balancer.set_endpoints(endpoints(1, 1, 1, 1))
        starts.add(keys(balancer, 1)[0])
    assert starts == {"a", "b", "c", "d"}


def test_round_robin_goes_on_after_the_last_served_when_an_endpoint_is_added() -> None:
    balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(6))
    a, b, c, d = endpoints(1, 1, 1, 1)
    balancer.set_endpoints([a, b, c])
    while keys(balancer, 1) != ["a"]:
        pass
    balancer.set_endpoints([d, a, b, c])
    assert keys(balancer, 4) == ["b", "c", "d", "a"]


def test_round_robin_goes_on_when_the_next_endpoint_leaves() -> None:
    balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(7))
    a, b, c = endpoints(1, 1, 1)
    balancer.set_endpoints([a, b, c])
    while keys(balancer, 1) != ["a"]:
        pass
    balancer.set_endpoints([a, c])
    assert keys(balancer, 3) == ["c", "a", "c"]


def test_round_robin_keeps_its_place_when_the_last_served_leaves() -> None:
    balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(8))
    a, b, c, d = endpoints(1, 1, 1, 1)
    balancer.set_endpoints([a, b, c, d])
    while keys(balancer, 1) != ["b"]:
        pass
    balancer.set_endpoints([a, c, d])
    assert keys(balancer, 3) == ["d", "a", "c"]


def test_round_robin_retry_takes_the_next_untried_and_leaves_the_rotation_alone() -> None:
    balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(9))
    balancer.set_endpoints(endpoints(1, 1, 1))
    while keys(balancer, 1) != ["c"]:
        pass
    assert keys(balancer, 1, exclude=["a"]) == ["b"]
    assert keys(balancer, 3) == ["a", "b", "c"]


def test_round_robin_with_one_dead_endpoint_of_two_alternates_first_attempts() -> None:
    """Retries do not advance the rotation, so the dead one gets only its half of first tries."""
    balancer: RoundRobin[Endpoint] = RoundRobin(random.Random(10))
    balancer.set_endpoints(endpoints(1, 1))
    first = []
    for _ in range(100):
        ep = balancer.pick()
        assert ep is not None
        first.append(ep.key)
        if ep.key == "a":  # a refuses connections: retried elsewhere
            assert keys(balancer, 1, exclude=["a"]) == ["b"]
    assert Counter(first) == {"a": 50, "b": 50}


# -- least request (P2C) ------------------------------------------------------------


def test_least_request_prefers_the_less_loaded() -> None:
    balancer: LeastRequest[Endpoint] = LeastRequest(random.Random(11))
    a, b = endpoints(1, 1)
    a.outstanding = 3
    balancer.set_endpoints([a, b])
    assert keys(balancer, 100) == ["b"] * 100


def test_least_request_never_picks_the_most_loaded_of_three() -> None:
    balancer: LeastRequest[Endpoint] = LeastRequest(random.Random(12))
    eps = endpoints(1, 1, 1)
    for ep, load in zip(eps, (0, 5, 10), strict=True):
        ep.outstanding = load
    balancer.set_endpoints(eps)
    counts = Counter(keys(balancer, 3000))
    assert counts["c"] == 0
    # the idle one wins whenever it is one of the two drawn: 2 draws in 3
    assert 1900 <= counts["a"] <= 2100
    assert counts["a"] + counts["b"] == 3000


def test_least_request_spreads_ties_evenly() -> None:
    balancer: LeastRequest[Endpoint] = LeastRequest(random.Random(13))
    balancer.set_endpoints(endpoints(1, 1, 1, 1))
    counts = Counter(keys(balancer, 4000))
    assert all(900 <= counts[k] <= 1100 for k in "abcd")


def test_least_request_balances_live_load() -> None:
    """Picks that stay in flight: the outstanding counts stay within one of each other."""
    balancer: LeastRequest[Endpoint] = LeastRequest(random.Random(14))
    eps = endpoints(1, 1)
    balancer.set_endpoints(eps)
    for _ in range(100):
        ep = balancer.pick()
        assert ep is not None
        ep.outstanding += 1
    assert abs(eps[0].outstanding - eps[1].outstanding) <= 1


def test_least_request_weighs_load_by_weight() -> None:
    balancer: LeastRequest[Endpoint] = LeastRequest(random.Random(15))
    light, heavy = endpoints(1, 3)
    light.outstanding, heavy.outstanding = 2, 5  # 3 per unit vs 2 per unit (with +1)
    balancer.set_endpoints([light, heavy])
    assert set(keys(balancer, 50)) == {"b"}
    light.outstanding = 1  # 2 per unit vs 2 per unit: a tie
    assert set(keys(balancer, 200)) == {"a", "b"}


def test_least_request_with_exclude_draws_among_the_untried() -> None:
    balancer: LeastRequest[Endpoint] = LeastRequest(random.Random(16))
    eps = endpoints(1, 1, 1)
    eps[1].outstanding = 9
    balancer.set_endpoints(eps)
    assert set(keys(balancer, 50, exclude=["a"])) == {"c"}


# -- weighted (smooth WRR) ----------------------------------------------------------


def test_weighted_follows_nginx_smooth_sequence() -> None:
    balancer: Weighted[Endpoint] = Weighted(random.Random(17))
    balancer.set_endpoints(endpoints(5, 1, 1))
    # nginx's documented example for weights 5, 1, 1 (ngx_http_upstream_round_robin.c);
    # the list is rotated at random, which decides whether b or c comes first.
    expected = rotations(["a", "a", "b", "a", "c", "a", "a"])
    expected += rotations(["a", "a", "c", "a", "b", "a", "a"])
    assert keys(balancer, 7) in expected


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 1), (5, 2, 2, 1), (10, 20, 70), (100, 1)])
def test_weighted_is_proportional(weights: tuple[int, ...]) -> None:
    balancer: Weighted[Endpoint] = Weighted(random.Random(18))
    balancer.set_endpoints(endpoints(*weights))
    rounds = 7
    counts = Counter(keys(balancer, sum(weights) * rounds))
    assert [counts[chr(ord("a") + i)] for i in range(len(weights))] == [w * rounds for w in weights]


def test_weighted_interleaves_rather_than_bursts() -> None:
    balancer: Weighted[Endpoint] = Weighted(random.Random(19))
    balancer.set_endpoints(endpoints(3, 3))
    assert keys(balancer, 6) in (["a", "b"] * 3, ["b", "a"] * 3)


def test_weighted_reduces_weights_by_their_gcd() -> None:
    balancer: Weighted[Endpoint] = Weighted(random.Random(20))
    balancer.set_endpoints(endpoints(200, 100))
    assert keys(balancer, 3) in rotations(["a", "b", "a"])


def test_weighted_long_periods_run_nginx_loop_with_the_same_sequence() -> None:
    eps = endpoints(7, 3, 2)
    recorded: Weighted[Endpoint] = Weighted(random.Random(21))
    recorded.set_endpoints(eps)
    looped: Weighted[Endpoint] = Weighted(random.Random(21), max_schedule=0)
    looped.set_endpoints(eps)
    assert keys(recorded, 36) == keys(looped, 36)
    assert set(keys(looped, 10, exclude=["a"])) <= {"b", "c"}
    assert Counter(keys(looped, 120)) == {"a": 70, "b": 30, "c": 20}


def test_weighted_retry_in_the_first_period_does_not_change_the_sequence() -> None:
    plain: Weighted[Endpoint] = Weighted(random.Random(23))
    retried: Weighted[Endpoint] = Weighted(random.Random(23))
    plain.set_endpoints(endpoints(5, 1, 1))
    retried.set_endpoints(endpoints(5, 1, 1))
    sequence = keys(plain, 14)
    first = keys(retried, 2)
    assert keys(retried, 1, exclude=["a"])[0] in {"b", "c"}
    assert first + keys(retried, 12) == sequence


def test_weighted_retry_does_not_move_the_schedule() -> None:
    balancer: Weighted[Endpoint] = Weighted(random.Random(22))
    balancer.set_endpoints(endpoints(2, 1))
    before = keys(balancer, 3)
    assert keys(balancer, 1, exclude=["a"]) == ["b"]
    assert keys(balancer, 3) == before
