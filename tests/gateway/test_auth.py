"""API keys (gateway/auth.py) and tenants: 401 without a key, keys re-read from their file, and two
projects that cannot see each other's stored responses under any endpoint."""

import json
import os

import httpx
import openai
import pytest

from gateway.auth import KeyRing, digest, parse_env_keys

from .fakes import words
from .responses_support import MODEL, assert_error, gateway, reset

KEY_A, KEY_B = "sk-alpha-0123456789", "sk-bravo-0123456789"


@pytest.fixture(scope="module")
def base_url(backend, store):
    keys = KeyRing(parse_env_keys(f"{KEY_A}=team-a,{KEY_B}=team-b"))
    with gateway(backend, store, keys=keys) as url:
        yield url


@pytest.fixture
def fake(backend):
    reset(backend).script = words("Hello", " there")
    return backend


def http_as(base_url: str, key: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=10)


def sdk_as(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


# -- keys -----------------------------------------------------------------------------------------
def test_missing_or_wrong_key_is_401_and_probes_stay_open(base_url, fake):
    with http_as(base_url, None) as anon, http_as(base_url, "sk-wrong-000000000") as wrong:
        err = assert_error(anon.get("/v1/models"), 401, None)
        assert "API key" in err["message"]
        err = assert_error(wrong.post("/v1/responses", json={"model": MODEL, "input": "Hi"}), 401,
                           None, "invalid_api_key")
        assert "sk-wrong" not in err["message"]          # the key is masked, not echoed
        assert anon.get("/health").status_code == 200
        assert anon.get("/ready").status_code == 200
        assert_error(anon.get("/metrics"), 401, None)     # TANDEM_AUTH_OPS defaults to on
    with pytest.raises(openai.AuthenticationError):
        sdk_as(base_url, "sk-wrong-000000000").models.list()
    assert sdk_as(base_url, KEY_A).models.list().data[0].id == MODEL


def test_ops_paths_open_when_auth_ops_is_off(store, backend):
    keys = KeyRing(parse_env_keys(KEY_A))
    with gateway(backend, store, keys=keys, auth_ops=False) as url, http_as(url, None) as anon:
        assert anon.get("/metrics").status_code == 200
        assert_error(anon.get("/v1/models"), 401, None)


def test_no_keys_configured_is_open(store, backend):
    with gateway(backend, store) as url, http_as(url, None) as anon:
        assert anon.get("/v1/models").status_code == 200


def test_key_file_holds_digests_and_is_reread_on_change(tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.auth.RELOAD_CHECK_S", 0.0)
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"sha256": digest(KEY_A), "project": "team-a",
                                          "requests_per_minute": 5}]}))
    ring = KeyRing(path=path)
    assert ring.lookup(KEY_A).project == "team-a" and ring.lookup(KEY_A).requests_per_minute == 5
    assert ring.lookup(KEY_B) is None
    path.write_text(json.dumps({"keys": [{"sha256": digest(KEY_B), "project": "team-b"}]}))
    os.utime(path, ns=(1, 1))                       # a new mtime even within one clock tick
    assert ring.lookup(KEY_A) is None                # revoked without a restart
    assert ring.lookup(KEY_B).project == "team-b"    # added
    path.write_text("{not json")
    os.utime(path, ns=(2, 2))
    assert ring.lookup(KEY_B) is None                # a broken file fails closed
    assert not ring.open


def test_bad_key_configuration_is_refused():
    with pytest.raises(ValueError):
        parse_env_keys("=team-a")
    with pytest.raises(FileNotFoundError):
        KeyRing(path=__import__("pathlib").Path("/nonexistent/keys.json"))
    assert parse_env_keys(KEY_A)[0].project == "default"
    assert parse_env_keys(f"{KEY_A}=p")[0].sha256 == digest(KEY_A) != KEY_A


# -- tenants --------------------------------------------------------------------------------------
def test_another_projects_response_is_404_under_every_endpoint(base_url, fake, store):
    a, b = sdk_as(base_url, KEY_A), sdk_as(base_url, KEY_B)
    mine = a.responses.create(model=MODEL, input="secret plan", stream=False)
    rid = mine.id
    assert "project" not in a.responses.retrieve(rid).model_dump() and "owner" not in mine.model_dump()
    with http_as(base_url, KEY_B) as other:
        for resp in (other.get(f"/v1/responses/{rid}"),
                     other.get(f"/v1/responses/{rid}", params={"stream": "true"}),
                     other.get(f"/v1/responses/{rid}/input_items"),
                     other.post(f"/v1/responses/{rid}/cancel"),
                     other.delete(f"/v1/responses/{rid}")):
            assert_error(resp, 404, "response_id", "response_not_found")
        resp = other.post("/v1/responses", json={"model": MODEL, "input": "and then?",
                                                 "previous_response_id": rid})
        assert_error(resp, 404, "previous_response_id", "response_not_found")
    assert a.responses.retrieve(rid).id == rid                     # still A's, untouched
    assert [i.id for i in a.responses.input_items.list(rid)]
    follow_up = a.responses.create(model=MODEL, input="and then?", previous_response_id=rid)
    assert follow_up.previous_response_id == rid
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(follow_up.id)
    a.responses.delete(rid)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(rid)


def test_records_without_an_owner_belong_to_the_default_project(store):
    store.create({"id": "resp_legacy", "status": "completed"}, [])
    store.client.delete(f"{store.namespace}:resp:{{resp_legacy}}:owner")
    assert store.owned("resp_legacy") == ({"id": "resp_legacy", "status": "completed"}, "default")
    store.create({"id": "resp_owned", "status": "completed"}, [], "team-a")
    assert store.owned("resp_owned")[1] == "team-a"
    assert store.delete("resp_owned")
    assert not store.client.exists(f"{store.namespace}:resp:{{resp_owned}}:owner")


# -- nothing internal by default ------------------------------------------------------------------
def test_no_debug_headers_and_test_hooks_refused_by_default(base_url, fake):
    with http_as(base_url, KEY_A) as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
        resp = http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200 and fake.params[-1].test_corrupt_kv is False
        assert not [h for h in resp.headers if h.startswith("x-tandem")]
        for path, payload in (("/v1/chat/completions", body),
                              ("/v1/responses", {"model": MODEL, "input": "Hi"})):
            resp = http.post(path, json=payload, headers={"x-tandem-test-corrupt-kv": "1"})
            assert_error(resp, 400, "x-tandem-test-corrupt-kv", "unsupported_parameter")


def test_tandem_up_says_whether_the_gateway_is_open():
    from gateway.main import access_line
    from tandem.settings import Settings

    assert "OPEN" in access_line(Settings.from_env({}))
    line = access_line(Settings.from_env({"TANDEM_API_KEYS": KEY_A}))
    assert "requires API keys" in line and KEY_A not in line
