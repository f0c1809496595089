"""Lease + fencing token against a real Redis."""

from __future__ import annotations

import threading
import time

import pytest

from bus.core.keys import Keys
from bus.domain.lease import Lease, StaleTokenError, check_fence, fenced_script

pytestmark = pytest.mark.redis


def _wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_two_leases_one_holder(redis_client, key_prefix):
    keys = Keys(key_prefix)
    a = Lease(redis_client, keys, "reconcile", owner="a")
    b = Lease(redis_client, keys, "reconcile", owner="b")
    assert a.acquire() == 1
    assert b.acquire() is None
    assert a.is_held() and not b.is_held()
    # b cannot release or renew a's lease
    assert not b.release() and not b.renew()
    assert a.holder() == "a|1"
    assert a.release()
    assert b.acquire() == 2  # tokens strictly increase across holders


def test_many_threads_race_one_winner(redis_url, key_prefix):
    import redis

    keys = Keys(key_prefix)
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        client = redis.Redis.from_url(redis_url)
        lease = Lease(client, keys, "race", owner=f"t{i}")
        barrier.wait()
        token = lease.acquire()
        if token is not None:
            winners.append(token)
        client.close()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert winners == [1]


def test_expired_lease_taken_over_and_stale_token_refused(redis_client, key_prefix):
    keys = Keys(key_prefix)
    old = Lease(redis_client, keys, "job", ttl_ms=50, owner="old")
    new = Lease(redis_client, keys, "job", ttl_ms=10_000, owner="new")
    t_old = old.acquire()
    fence = keys.symbol_fence("XAUUSD")
    check_fence(redis_client, fence, t_old)  # old holder writes while it holds the lease

    assert _wait_until(lambda: new.acquire() is not None)
    t_new = new.token
    assert t_new > t_old
    assert not old.is_held() and not old.renew()
    assert not old.release()  # releasing must not delete the new holder's lease
    assert new.is_held()

    write = fenced_script(redis_client, "redis.call('SET', KEYS[2], ARGV[2]) return 1")
    target = f"{key_prefix}:{{XAUUSD}}:target"
    write(keys=[fence, target], args=[t_new, "new"])
    with pytest.raises(StaleTokenError):
        write(keys=[fence, target], args=[t_old, "old"])
    assert redis_client.get(target) == "new"


def test_renew_extends(redis_client, key_prefix):
    keys = Keys(key_prefix)
    lease = Lease(redis_client, keys, "renew", ttl_ms=1_000)
    lease.acquire()
    assert lease.renew()
    assert redis_client.pttl(lease.lease_key) > 900


def test_context_manager_releases(redis_client, key_prefix):
    keys = Keys(key_prefix)
    with Lease(redis_client, keys, "ctx") as lease:
        assert lease.token == 1
        assert Lease(redis_client, keys, "ctx").acquire() is None
    assert Lease(redis_client, keys, "ctx").acquire() == 2
