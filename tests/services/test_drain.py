"""A worker's drain (services/worker.py ``Drain``): new work refused once it began, held work
waited for, the wait bounded. The whole path (SIGTERM, registry, real streams) runs in
tests/e2e/test_ray.py's scale-in test."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from services.worker import Drain


class Aborted(Exception):
    pass


class Context:
    """The one ServicerContext call ``refuse_new`` makes: abort raises, as gRPC's does."""

    def abort(self, code, details):
        raise Aborted(code, details)


def test_new_work_is_refused_with_unavailable_only_once_the_drain_began():
    drain = Drain()
    drain.refuse_new(Context(), "decode-0")          # serving: nothing happens
    drain.begin()
    with pytest.raises(Aborted) as e:
        drain.refuse_new(Context(), "decode-0")
    code, details = e.value.args
    assert code == grpc.StatusCode.UNAVAILABLE and "decode-0 is draining" in details


def test_wait_returns_once_held_work_and_the_extra_condition_are_done():
    held_kv = threading.Event()
    drain = Drain(also_busy=lambda: not held_kv.is_set())
    release = threading.Event()

    def call():
        with drain.hold():
            release.wait(10)
    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.05)
    drain.begin()
    assert drain.busy()
    threading.Timer(0.2, release.set).start()
    threading.Timer(0.4, held_kv.set).start()
    started = time.monotonic()
    assert drain.wait(10) is True
    assert 0.35 < time.monotonic() - started < 5 and not drain.busy()
    t.join(5)


def test_wait_gives_up_at_its_deadline():
    drain = Drain(also_busy=lambda: True)
    started = time.monotonic()
    assert drain.wait(0.3) is False
    assert time.monotonic() - started < 3
