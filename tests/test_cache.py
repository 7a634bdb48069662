"""ExpertCache: the capacity invariant under random churn, hand-checked eviction orders, all
through the API the engine uses (get, put, `in`, set_capacity)."""

from __future__ import annotations

import random
import threading

import pytest

from engine.cache import POLICIES, ExpertCache


def _keys(c: ExpertCache, n: int = 20, layer: int = 0) -> set[tuple[int, int]]:
    return {(layer, e) for e in range(n) if (layer, e) in c}


@pytest.mark.parametrize("policy", POLICIES)
def test_invariant_under_random_churn(policy: str) -> None:
    rnd = random.Random(policy)
    hot = [(rnd.randrange(4), e) for e in range(16)]
    for capacity in (0, 7, 50, 100, 333):
        c = ExpertCache(capacity, policy, pinned_fraction=0.4, hot=hot, entry_bytes=10)
        # The pinned set is the first hot keys that fit in 40% of the capacity, deduplicated.
        first = list(dict.fromkeys(hot))[: int(0.4 * capacity) // 10]
        pinned = set(first) if policy == "pinned" else set()
        sizes: dict[tuple[int, int], int] = {}
        for _ in range(3000):
            key = (rnd.randrange(4), rnd.randrange(16))
            if rnd.random() < 0.5:
                c.get(key)
                continue
            # Mostly uniform sizes; a few odd ones exercise replace-with-another-size.
            size = 10 if rnd.random() < 0.9 else rnd.randrange(0, 40)
            locked = sum(n for k, n in sizes.items() if k in pinned and k in c and k != key)
            fits = capacity > 0 and size <= capacity - locked
            assert c.put(key, object(), size) == fits
            if fits:
                sizes[key] = size
            resident = {k for k in sizes if k in c}
            assert c.used_bytes == sum(sizes[k] for k in resident) <= capacity
            assert {k for k in pinned if k in sizes} <= resident  # pinned: never evicted
        if capacity == 0:
            assert len(c) == 0


def test_capacity_zero_caches_nothing() -> None:
    c = ExpertCache(0)
    assert c.put((0, 0), "x", 1) is False
    assert c.put((0, 1), "x", 0) is False
    assert (0, 0) not in c and c.get((0, 0)) is None and len(c) == 0


def test_lru_order_hand_checked() -> None:
    c = ExpertCache(30, "lru")
    for e in (1, 2, 3):
        assert c.put((0, e), f"v{e}", 10)
    assert c.get((0, 1)) == "v1"  # order now 2, 3, 1
    c.put((0, 4), "v4", 10)  # evicts 2
    assert _keys(c) == {(0, 1), (0, 3), (0, 4)}
    assert (0, 3) in c  # `in` does not refresh: 3 is still oldest
    c.put((0, 5), "v5", 10)  # evicts 3
    assert _keys(c) == {(0, 1), (0, 4), (0, 5)}
    c.put((0, 6), "v6", 20)  # needs two slots: evicts 1 then 4
    assert _keys(c) == {(0, 5), (0, 6)}
    assert c.put((0, 7), "big", 31) is False  # bigger than the whole cache
    assert _keys(c) == {(0, 5), (0, 6)}  # and a refused put evicts nothing


def test_lfu_evicts_least_frequent_ties_to_least_recent() -> None:
    c = ExpertCache(30, "lfu")
    for e in (1, 2, 3):
        c.put((0, e), e, 10)
    c.get((0, 1))
    c.get((0, 1))
    c.get((0, 3))  # freqs: 1→3, 2→1, 3→2
    c.put((0, 4), 4, 10)  # evicts 2 (freq 1)
    assert _keys(c) == {(0, 1), (0, 3), (0, 4)}
    c.put((0, 5), 5, 10)  # 4 has freq 1: evicted, even though newest among low ones
    assert _keys(c) == {(0, 1), (0, 3), (0, 5)}
    c.get((0, 5))  # 3 and 5 both freq 2; 3 used less recently
    c.put((0, 6), 6, 10)
    assert _keys(c) == {(0, 1), (0, 5), (0, 6)}


def test_pinned_keeps_hot_set_under_churn() -> None:
    hot = [(0, 7), (0, 3), (0, 9), (0, 1)]
    c = ExpertCache(100, "pinned", pinned_fraction=0.3, hot=hot)  # 3 slots of 10 pinned
    for k in hot:  # the first put fixes the entry size, hence the pinned set: hot[:3]
        c.put(k, "h", 10)
    rnd = random.Random(1)
    for _ in range(500):
        k = (1, rnd.randrange(50))
        if c.get(k) is None:
            assert c.put(k, "cold", 10)
        assert c.used_bytes <= 100
    assert set(hot[:3]) <= _keys(c)
    assert (0, 1) not in c  # the fourth hot key did not fit the pinned share: evicted
    assert len(_keys(c, 50, layer=1)) == 7  # the rest of the cache churned


def test_pinned_entries_refuse_a_put_that_needs_them() -> None:
    c = ExpertCache(30, "pinned", pinned_fraction=0.7, hot=[(0, 1), (0, 2)], entry_bytes=10)
    c.put((0, 1), "a", 10)
    c.put((0, 2), "b", 10)
    assert c.put((0, 3), "big", 20) is False  # only pinned entries could make room
    assert _keys(c) == {(0, 1), (0, 2)} and c.used_bytes == 20
    assert c.set_capacity(0) is False  # capacity stops at what pinned entries hold
    assert c.capacity_bytes == 20 and _keys(c) == {(0, 1), (0, 2)}


def test_replace_and_set_capacity() -> None:
    c = ExpertCache(30, "lru")
    c.put((0, 1), "a", 10)
    c.put((0, 1), "a2", 10)
    assert c.get((0, 1)) == "a2" and c.used_bytes == 10 and len(c) == 1
    c.put((0, 1), "a3", 25)
    assert c.used_bytes == 25
    c.put((0, 2), "b", 5)  # evicts nothing: 25 + 5 fits
    assert c.set_capacity(10) is True and c.used_bytes == 5 and _keys(c) == {(0, 2)}
    assert c.set_capacity(0) is True and len(c) == 0 and c.used_bytes == 0


def test_evicted_values_are_handed_back() -> None:
    gone: list[tuple[tuple[int, int], str]] = []
    c = ExpertCache(20, "lru", on_evict=lambda k, v: gone.append((k, v)))
    c.put((0, 1), "a", 10)
    c.put((0, 2), "b", 10)
    c.put((0, 3), "c", 10)
    c.put((0, 3), "c2", 10)  # a replaced value leaves the cache too
    assert gone == [((0, 1), "a"), ((0, 3), "c")]


@pytest.mark.parametrize(("args", "match"), [(("fifo",), "policy"), ((), "capacity")])
def test_bad_arguments_are_refused(args: tuple[str, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExpertCache(10 if args else -1, *args)


@pytest.mark.parametrize("policy", POLICIES)
def test_thread_safety(policy: str) -> None:
    c = ExpertCache(200, policy, hot=[(0, e) for e in range(8)], entry_bytes=10)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(2000):
                k = (0, rnd.randrange(64))
                if c.get(k) is None:
                    c.put(k, seed, 10)
                assert c.used_bytes <= 200
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert c.used_bytes == 10 * len(c) <= 200  # uniform sizes: the byte count is the entries'
