"""The byte-bounded LRU cache the stage services keep per-avatar state in."""

import threading

import pytest

from talkingface.serving.cache import ByteLRU


def test_byte_lru_evicts_least_recently_used():
    cache = ByteLRU(10, len)
    loads: list[str] = []

    def loader(value: str):
        return lambda: loads.append(value) or value

    assert cache.get("a", loader("aaaa")) == "aaaa"
    assert cache.get("b", loader("bbbb")) == "bbbb"
    assert cache.get("a", loader("xxxx")) == "aaaa"  # hit; "b" is now the oldest
    cache.get("c", loader("cccc"))
    assert cache.keys() == ["a", "c"] and cache.nbytes == 8
    assert cache.get("big", loader("x" * 11)) == "x" * 11  # larger than the bound: not kept
    assert cache.keys() == ["a", "c"]
    assert (cache.hits, cache.misses, cache.evictions) == (1, 4, 1)
    assert loads == ["aaaa", "bbbb", "cccc", "x" * 11]
    with pytest.raises(RuntimeError):
        cache.get("boom", lambda: (_ for _ in ()).throw(RuntimeError("load failed")))
    assert cache.get("boom", loader("ok")) == "ok"

    # Concurrent misses on one key load it once.
    slow = ByteLRU(100, len)
    started = threading.Event()
    calls: list[int] = []

    def load_slowly():
        calls.append(1)
        started.wait(1)
        return "v"

    threads = [threading.Thread(target=slow.get, args=("k", load_slowly)) for _ in range(4)]
    for t in threads:
        t.start()
    started.set()
    for t in threads:
        t.join()
    assert calls == [1]
