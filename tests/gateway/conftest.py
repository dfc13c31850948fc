"""Fixtures for the Responses tests: a real Redis store and a gateway over a FakeBackend.

Modules with fixtures of the same names (test_app.py) override these, as pytest does.
"""

import httpx
import pytest

from .fakes import FakeBackend
from .responses_support import gateway, redis_store, reset, sdk


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with redis_store(tmp_path_factory) as store:
        yield store


@pytest.fixture(scope="module")
def backend():
    return FakeBackend()


@pytest.fixture(scope="module")
def base_url(backend, store):
    with gateway(backend, store) as url:
        yield url


@pytest.fixture
def fake(backend):
    return reset(backend)


@pytest.fixture
def client(base_url):
    return sdk(base_url)


@pytest.fixture
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c
