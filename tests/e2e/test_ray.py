"""Ray mode on a real local Ray cluster: ``tandem ray up`` runs the prefill and decode workers as
Ray actors (the same worker processes, gRPC, Redis registry and torch.distributed KV handoff), the
real model, the official ``openai`` SDK. One ``tandem ray up`` for the module; the tests run in
order and the last one stops it with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import start_up

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
RECOVERY_S = 120         # docs/architecture.md "Ray mode": a SIGKILLed worker serves again within this
STORY = "Write a very long story about a dragon."


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Ray's GCS, raylet, dashboard, actors, their worker children)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for c in map(int, children):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
                out.append(pid)
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def ray_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tandem-ray")
    # Ray's memory monitor kills workers when the whole machine is nearly full; on a shared test
    # machine that is other people's memory, so it is off here (the kernel's OOM killer remains).
    env = {"TANDEM_KV_CACHE_GB": "0.25", "TANDEM_DRAIN_TIMEOUT_S": "120", "RAY_memory_monitor_refresh_ms": "0"}
    stack = start_up(tmp, env,
                     ["--prefill", "1", "--decode", "1", "--num-cpus", "4"], command=("ray", "up"))
    seen: set[int] = set()
    stack.tree = lambda: seen.update(descendants(stack.proc.pid)) or seen
    stack.tree()
    try:
        yield stack
    finally:   # whatever happened: nothing this module started may outlive it
        stack.tree()
        if stack.proc.poll() is None:
            stack.proc.send_signal(signal.SIGINT)
            try:
                stack.proc.wait(60)
            except subprocess.TimeoutExpired:
                stack.proc.kill()
        for pid in alive(seen):
            os.kill(pid, signal.SIGKILL)


def tandem_ray(stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TANDEM_DATA_DIR=str(stack.data_dir))
    return subprocess.run([sys.executable, "-m", "tandem.cli", "ray", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def ray_query(stack, code: str) -> object:
    """Run ``code`` (which prints JSON) as a separate Ray driver on the stack's cluster (``ADDRESS``)."""
    recorded = json.loads((stack.data_dir / "ray-tandem.address").read_text())
    prelude = (f"import json, ray\nADDRESS = {recorded['address']!r}\n"
               f"ray.init(address=ADDRESS, namespace='tandem', log_to_driver=False)\n")
    env = dict(os.environ, RAY_AUTH_MODE=recorded["auth_mode"] or "disabled")
    out = subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:] + "".join(stack.lines[-30:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def chat(client, content="What is the capital of France?", **kw):
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], temperature=0, **kw)


def decode_workers(stack) -> dict[str, object]:
    return {w.worker_id: w for w in stack.registry().live("decode")}


def num_running(stack, worker) -> int:
    from protos.tandem.v1 import worker_pb2 as pb
    from protos.tandem.v1 import worker_pb2_grpc as rpc

    with stack.channel(worker.address) as ch:
        return rpc.DecodeServiceStub(ch).Status(pb.StatusRequest(), timeout=5).num_running


def test_chat_and_a_stored_responses_chain_run_on_the_actors(ray_stack):
    client = ray_stack.client()
    raw = chat(client, max_tokens=12)
    assert "Paris" in raw.parse().choices[0].message.content
    assert raw.headers["x-tandem-prefill-worker"] == "tandem-prefill-0"
    assert raw.headers["x-tandem-decode-worker"] == "tandem-decode-1"
    assert int(raw.headers["x-tandem-kv-bytes"]) > 0 and raw.headers["x-tandem-kv-backend"] == "gloo"
    first = client.responses.create(model=MODEL, input="My name is Ada and I like tea.", store=True,
                                    max_output_tokens=10, temperature=0)
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                     store=True, max_output_tokens=10, temperature=0)
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    items = list(client.responses.input_items.list(second.id, order="asc"))
    assert [i.role for i in items] == ["user", "assistant", "user"]


def test_ray_reports_the_actors_with_their_declared_resources(ray_stack):
    actors = ray_query(ray_stack, """
from ray.util.state import list_actors
ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
actors = list_actors(address=ADDRESS, filters=[("ray_namespace", "=", "tandem")], detail=True)
print(json.dumps([{"name": a.name, "state": a.state, "resources": a.required_resources, "pid": a.pid,
                   "node_ip": ips[a.node_id]} for a in actors]))
""")
    address = json.loads((ray_stack.data_dir / "ray-tandem.address").read_text())["address"]
    assert f"ray list actors --address {address} --detail" in "".join(ray_stack.lines)   # told to the operator
    by_name = {a["name"]: a for a in actors if a["state"] == "ALIVE"}
    assert set(by_name) == {"controller", "prefill-0", "decode-1"}
    assert by_name["prefill-0"]["resources"] == {"CPU": 1.0}
    assert by_name["decode-1"]["resources"] == {"CPU": 1.0}
    assert by_name["controller"]["resources"] == {}
    # the registered worker is the child of its actor's process, advertising the node's IP
    worker = decode_workers(ray_stack)["tandem-decode-1"]
    status = Path(f"/proc/{worker.pid}/status").read_text()
    assert f"PPid:\t{by_name['decode-1']['pid']}\n" in status
    node_ip = by_name["decode-1"]["node_ip"]
    assert worker.address.split(":")[0] == worker.kv_store.split(":")[0] == node_ip


def test_a_sigkilled_decode_actor_fails_its_requests_then_ray_restarts_it(ray_stack):
    client = ray_stack.client()
    before = decode_workers(ray_stack)["tandem-decode-1"]
    actor_pid = int(Path(f"/proc/{before.pid}/status").read_text().split("PPid:\t")[1].split()[0])
    assert "WorkerActor" in Path(f"/proc/{actor_pid}/cmdline").read_text()
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": STORY}],
                                            max_tokens=1000, temperature=0, stream=True)
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    os.kill(actor_pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(openai.APIError) as e:
        for _ in chunks:
            pass
    failed_after = time.monotonic() - killed
    assert "worker failed" in str(e.value) and failed_after < 15
    while True:   # Ray restarts the actor; its new worker registers under the same id
        assert time.monotonic() - killed < RECOVERY_S, "".join(ray_stack.lines[-60:])
        try:
            raw = chat(client, max_tokens=8)
            if raw.headers["x-tandem-decode-worker"] == "tandem-decode-1":
                break
        except openai.APIError:
            time.sleep(0.5)
    print(f"\nSIGKILL of the decode actor: its stream failed after {failed_after:.1f} s; "
          f"serving on the restarted worker after {time.monotonic() - killed:.1f} s")
    after = decode_workers(ray_stack)["tandem-decode-1"]
    assert after.pid != before.pid and after.pid not in alive([before.pid])
    restarts = ray_query(ray_stack, """
from ray.util.state import list_actors
actors = list_actors(address=ADDRESS, filters=[("ray_namespace", "=", "tandem")], detail=True)
print(json.dumps({a.name: a.num_restarts for a in actors}))
""")
    assert restarts["decode-1"] == 1 and restarts["prefill-0"] == 0


def test_scale_out_spreads_requests_and_scale_in_drains_without_failing_them(ray_stack):
    out = tandem_ray(ray_stack, "scale", "--decode", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(decode_workers(ray_stack)) == {"tandem-decode-1", "tandem-decode-2"}
    client = ray_stack.client()
    served = {chat(client, f"Question {i}: what is the capital of France?", max_tokens=4)
              .headers["x-tandem-decode-worker"] for i in range(10)}
    assert served == {"tandem-decode-1", "tandem-decode-2"}

    results: dict[int, object] = {}

    def story(i: int) -> None:
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"{STORY} Number {i}."}],
                max_tokens=80, temperature=0, stream=True)
            results[i] = [c.choices[0].finish_reason for c in reply if c.choices][-1]
        except Exception as exc:   # noqa: BLE001 - the assertion below shows it
            results[i] = exc
    threads = [threading.Thread(target=story, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    removed = decode_workers(ray_stack)["tandem-decode-2"]
    deadline = time.monotonic() + 60
    while not num_running(ray_stack, removed):
        assert time.monotonic() < deadline, "no request reached tandem-decode-2"
        time.sleep(0.2)
    draining = time.monotonic()
    out = tandem_ray(ray_stack, "scale", "--decode", "1")
    print(f"\nscale --decode 1 (drain of tandem-decode-2 included) took {time.monotonic() - draining:.1f} s")
    for t in threads:
        t.join(120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "drained decode-2 (exit status 0)" in out.stdout, out.stdout
    assert all(r in ("length", "stop") for r in results.values()) and len(results) == 4, results
    assert set(decode_workers(ray_stack)) == {"tandem-decode-1"}
    assert alive([removed.pid]) == []
    assert "Paris" in chat(client, max_tokens=12).parse().choices[0].message.content


def test_ctrl_c_leaves_no_actor_and_no_process(ray_stack):
    tree = ray_stack.tree()
    assert len(tree) > 5     # GCS, raylet, dashboard, actors, workers, Redis
    ray_stack.proc.send_signal(signal.SIGINT)
    assert ray_stack.proc.wait(90) == 0, "".join(ray_stack.lines[-40:])
    deadline = time.monotonic() + 15
    while alive(tree):
        assert time.monotonic() < deadline, f"left running after Ctrl-C: {alive(tree)}"
        time.sleep(0.5)
    assert not (ray_stack.data_dir / "ray-tandem.address").exists()
