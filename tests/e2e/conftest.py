"""One real ``tandem up`` per test session: embedded Redis, a prefill and a decode worker process,
the gateway, the real model. Tests talk to it with the official ``openai`` SDK."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tandem.redis_server import free_port


@dataclass
class Stack:
    proc: subprocess.Popen
    base_url: str
    redis_url: str
    data_dir: Path
    worker_secret: str = ""
    lines: list[str] = field(default_factory=list)

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=120, **kw)

    def registry(self):
        import redis

        from services.registry import WorkerRegistry

        return WorkerRegistry(redis.Redis.from_url(self.redis_url, socket_timeout=10))   # a loaded machine

    def channel(self, address: str):
        """A gRPC channel to a worker of this stack; its calls carry the stack's worker secret."""
        from services.secret import secret_channel

        return secret_channel(address, self.worker_secret)

    def start_gateway(self, log: Path | None = None, **env: str) -> tuple[subprocess.Popen, str]:
        """Another gateway process on this stack's Redis and workers (``start_gateway``)."""
        return start_gateway(self.redis_url, log, TANDEM_WORKER_SECRET=self.worker_secret, **env)

    def start_decode_worker(self, worker_id: str, **env: str) -> subprocess.Popen:
        """Another decode worker on this stack, returned once it is in the registry."""
        return self.start_worker("decode", worker_id, **env)

    def start_worker(self, role: str, worker_id: str, **env: str) -> subprocess.Popen:
        """Another worker of ``role`` on this stack, returned once it is in the registry."""
        proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", role, "--worker-id", worker_id],
                                env=dict(os.environ, TANDEM_REDIS_URL=self.redis_url,
                                         TANDEM_WORKER_SECRET=self.worker_secret,
                                         TANDEM_KV_CACHE_GB="0.25", **env),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        try:
            while worker_id not in {w.worker_id for w in self.registry().live(role)}:
                assert proc.poll() is None and time.monotonic() < deadline, f"{worker_id} did not register"
                time.sleep(0.5)
        except BaseException:   # nobody else holds it yet: leave nothing running
            proc.kill()
            proc.wait(10)
            raise
        return proc

    def worker_status(self, role: str):
        """gRPC Status of every live worker of ``role``."""
        from protos.tandem.v1 import worker_pb2 as pb
        from protos.tandem.v1 import worker_pb2_grpc as rpc

        out = []
        for w in self.registry().live(role):
            stub_cls = rpc.PrefillServiceStub if role == "prefill" else rpc.DecodeServiceStub
            with self.channel(w.address) as ch:
                out.append(stub_cls(ch).Status(pb.StatusRequest(), timeout=5))
        return out

    def worker_placements(self, role: str) -> list[tuple[tuple[int, ...], int]]:
        """(cpus, torch threads) of each live worker of ``role``: its affinity as the kernel
        reports it (``Cpus_allowed_list`` in /proc) and the threads its Status reports."""
        return [(_cpus_allowed(st.pid), st.num_threads) for st in self.worker_status(role)]


def _cpus_allowed(pid: int) -> tuple[int, ...]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("Cpus_allowed_list:"))
    cpus: list[int] = []
    for part in line.split(":", 1)[1].strip().split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return tuple(cpus)


def start_gateway(redis_url: str, log: Path | None = None, **env: str) -> tuple[subprocess.Popen, str]:
    """A ``tandem gateway`` process on ``redis_url`` (its output to the file ``log``, if given);
    (process, base URL) once ``/ready`` is 200."""
    import httpx

    port = free_port()
    out = open(log, "w") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "gateway", "--port", str(port)],
                            env=dict(os.environ, TANDEM_REDIS_URL=redis_url, **env),
                            stdout=out, stderr=subprocess.STDOUT)
    if log is not None:
        out.close()             # the child holds its own copy
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(x) for x in out.split()]


def start_up(tmp: Path, extra_env: dict | None = None, args: list[str] = (), command: tuple[str, ...] = ("up",),
             ready_timeout_s: float = 300) -> Stack:
    """``tandem up`` (or ``command``, e.g. ``("ray", "up")``) on a free port, once it printed its URL."""
    port = free_port()
    env = {**os.environ, "TANDEM_DATA_DIR": str(tmp), "TANDEM_TEST_HOOKS": "1", "TANDEM_DEBUG_HEADERS": "1",
           "TANDEM_KV_CACHE_GB": "0.5", "TANDEM_WORKER_SECRET": secrets.token_urlsafe(16), **(extra_env or {})}
    env.pop("TANDEM_REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", *command, "--port", str(port), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack = Stack(proc, f"http://127.0.0.1:{port}/v1", "", tmp, worker_secret=env["TANDEM_WORKER_SECRET"])
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            stack.lines.append(line)
            m = re.search(r"Tandem is ready at (\S+)\s+\(redis: (\S+);", line)
            if m:
                stack.redis_url = m.group(2)
                ready.set()
    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + ready_timeout_s
    while not ready.wait(0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("tandem up did not become ready:\n" + "".join(stack.lines[-60:]))
    return stack


def stop_up(stack: Stack) -> None:
    """Ctrl-C, as a person would; everything must be gone afterwards."""
    children = _children(stack.proc.pid)
    stack.proc.send_signal(signal.SIGINT)
    try:
        assert stack.proc.wait(60) == 0, "".join(stack.lines[-40:])
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
    time.sleep(0.5)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert not alive, f"left running after Ctrl-C: {alive}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = start_up(tmp_path_factory.mktemp("tandem-up"))
    yield s
    stop_up(s)
