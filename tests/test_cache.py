"""ExpertCache: the capacity invariant under random churn, hand-checked eviction orders."""

from __future__ import annotations

import random
import threading

import pytest

from engine.cache import POLICIES, ExpertCache


def _keys(c: ExpertCache, n: int = 20) -> set[tuple[int, int]]:
    return {(0, e) for e in range(n) if (0, e) in c}


@pytest.mark.parametrize("policy", POLICIES)
def test_invariant_under_random_churn(policy: str) -> None:
    rnd = random.Random(policy)
    hot = [(rnd.randrange(4), e) for e in range(16)]
    for capacity in (0, 7, 50, 100, 333):
        c = ExpertCache(capacity, policy, pinned_fraction=0.4, hot=hot, entry_bytes=10)
        protected: list[tuple[int, int]] = []
        for _ in range(3000):
            key = (rnd.randrange(4), rnd.randrange(16))
            held = {k for k in protected if k in c} | {k for k in c.pinned_keys() if k in c}
            op = rnd.random()
            if op < 0.45:
                c.get(key)
            elif op < 0.85:
                # Mostly uniform sizes; a few odd ones exercise replace-with-another-size.
                size = 10 if rnd.random() < 0.9 else rnd.randrange(0, 40)
                room = capacity - c._locked + (c._entries[key].nbytes if key in held else 0)
                assert c.put(key, object(), size) == (capacity > 0 and size <= room)
            elif op < 0.93:
                c.protect([key])
                protected.append(key)
            elif protected:
                c.unprotect([protected.pop(rnd.randrange(len(protected)))])
            assert 0 <= c.used_bytes <= c.capacity_bytes
            assert held <= set(c._entries)  # protected and pinned entries never evicted
            locked = {k for k in c._entries if k in protected or k in c.pinned_keys()}
            assert c._locked == sum(c._entries[k].nbytes for k in locked)
        st = c.stats()
        assert st["used_bytes"] <= capacity
        if capacity == 0:
            assert len(c) == 0 and st["insertions"] == 0


def test_capacity_zero_caches_nothing() -> None:
    c = ExpertCache(0)
    assert c.put((0, 0), "x", 1) is False
    assert c.put((0, 1), "x", 0) is False
    assert (0, 0) not in c and c.get((0, 0)) is None
    assert c.stats()["misses"] == 1 and c.stats()["rejections"] == 2


def test_lru_order_hand_checked() -> None:
    c = ExpertCache(30, "lru")
    for e in (1, 2, 3):
        assert c.put((0, e), f"v{e}", 10)
    assert c.get((0, 1)) == "v1"  # order now 2, 3, 1
    c.put((0, 4), "v4", 10)  # evicts 2
    assert _keys(c) == {(0, 1), (0, 3), (0, 4)}
    c.peek((0, 3))  # peek does not refresh: 3 is still oldest
    c.put((0, 5), "v5", 10)  # evicts 3
    assert _keys(c) == {(0, 1), (0, 4), (0, 5)}
    c.put((0, 6), "v6", 20)  # needs two slots: evicts 1 then 4
    assert _keys(c) == {(0, 5), (0, 6)}
    st = c.stats()
    assert (st["hits"], st["misses"], st["evictions"], st["insertions"]) == (1, 0, 4, 6)
    assert st["hit_rate"] == 1.0
    assert c.put((0, 7), "big", 31) is False  # bigger than the whole cache


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
    c.put((0, 7), "h", 10)  # first put fixes entry size -> pinned set
    assert c.pinned_keys() == frozenset(hot[:3])
    c.put((0, 3), "h", 10)
    c.put((0, 9), "h", 10)
    rnd = random.Random(1)
    for _ in range(500):
        k = (1, rnd.randrange(50))
        if c.get(k) is None:
            assert c.put(k, "cold", 10)
        assert c.used_bytes <= 100
    assert {(0, 7), (0, 3), (0, 9)} <= set(c._entries)
    assert c.stats()["evictions"] > 0


def test_protected_keys_survive_concurrent_puts() -> None:
    c = ExpertCache(50, "lru")
    need = [(3, e) for e in range(4)]
    for k in need:
        c.put(k, "layer3", 10)
    with c.protecting(need):
        # Prefetch of the next layer floods the cache: only the one free slot may churn.
        for e in range(20):
            assert c.put((4, e), "prefetch", 10)
        assert all(k in c for k in need)
        assert c.put((4, 99), "big", 20) is False  # would need a protected victim
        assert all(k in c for k in need)
    c.put((4, 100), "x", 40)  # unprotected now: they may go
    assert sum(k in c for k in need) <= 1


def test_protect_nests_and_covers_later_puts() -> None:
    c = ExpertCache(20, "lfu")
    c.protect([(0, 1)])
    c.protect([(0, 1)])
    c.put((0, 1), "a", 10)  # protected before it arrived: locked on insert
    c.put((0, 2), "b", 10)
    c.unprotect([(0, 1)])  # still protected once
    c.put((0, 3), "c", 10)
    assert (0, 1) in c and (0, 2) not in c
    c.unprotect([(0, 1)])
    c.get((0, 3))
    c.put((0, 4), "d", 10)
    assert (0, 1) not in c


def test_replace_and_set_capacity() -> None:
    c = ExpertCache(30, "lru")
    c.put((0, 1), "a", 10)
    c.put((0, 1), "a2", 10)
    assert c.peek((0, 1)) == "a2" and c.used_bytes == 10
    c.put((0, 1), "a3", 25)
    assert c.used_bytes == 25
    c.put((0, 2), "b", 5)
    c.protect([(0, 2)])
    assert c.set_capacity(10) is True and c.used_bytes == 5
    assert c.set_capacity(0) is False  # protected bytes stay; capacity stops at them
    assert c.capacity_bytes == 5 and c.used_bytes == 5
    with pytest.raises(ValueError):
        ExpertCache(10, "fifo")
    with pytest.raises(ValueError):
        ExpertCache(-1)


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
                if rnd.random() < 0.05:
                    with c.protecting([k]):
                        c.put((1, rnd.randrange(64)), seed, 10)
                assert c.used_bytes <= 200
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert c.used_bytes == sum(e.nbytes for e in c._entries.values()) <= 200
    assert c._locked == sum(e.nbytes for k, e in c._entries.items() if k in c.pinned_keys())
