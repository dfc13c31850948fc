"""``tandem bench`` arguments and a run against a server that is not there (no model)."""

from __future__ import annotations

import argparse
import json
import math
import socket

import pytest

from tandem.bench.cli import add_arguments, build_config
from tandem.cli import main

BASE = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build_config(parser.parse_args([*BASE, *argv]))


def test_defaults():
    c = parse()
    assert c.load.num_requests == 100 and math.isinf(c.load.request_rate) and c.load.concurrency is None
    assert c.workload.dataset == "random" and c.ignore_eos and c.temperature == 0.0
    assert c.result_json.parent.name == "bench-results" and c.plot_dir == c.result_json.with_suffix("")


def test_options():
    c = parse("--dataset", "chat", "--request-rate", "2.5", "--burstiness", "0.5", "--concurrency", "4",
              "--duration", "30", "--slo", "ttft=0.5,e2e=10", "--extra-body", '{"top_k": 1}',
              "--result-json", "x/r.json", "--no-plots", "--warmup", "3", "--seed", "9")
    assert not c.ignore_eos                        # chat answers end naturally unless asked
    assert (c.load.request_rate, c.load.burstiness, c.load.concurrency) == (2.5, 0.5, 4)
    assert c.load.duration == 30 and c.load.num_requests is None and c.load.warmup == 3
    assert c.slo.ttft == 0.5 and c.slo.e2e == 10 and c.slo.tpot is None
    assert c.extra_body == {"top_k": 1} and c.plot_dir is None and c.seed == 9
    assert parse("--dataset", "chat", "--ignore-eos").ignore_eos
    assert not parse("--no-ignore-eos").ignore_eos


@pytest.mark.parametrize("argv", [["--slo", "itl=1"], ["--extra-body", "[1]"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(["bench", *BASE, *argv])
    assert e.value.code == 2


def test_bad_combination_returns_2(capsys):
    assert main(["bench", *BASE, "--duration", "5"]) == 2     # all at once, forever
    assert "concurrency" in capsys.readouterr().err


def test_a_dead_server_fails_every_request_without_crashing(tmp_path, capsys):
    with socket.socket() as s:                                # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r.json"
    rc = main(["bench", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m", "--num-requests", "3",
               "--result-json", str(out), "--no-progress"])
    assert rc == 1
    assert "Failed requests:                         3" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["metrics"]["completed"] == 0 and len(d["requests"]) == 3
    assert all("ConnectError" in r["error"] for r in d["requests"])
    assert d["calibration"]["measured"] is False
    assert (tmp_path / "r" / "latency_cdf.png").exists()


@pytest.mark.parametrize("argv,named", [
    (["--dataset", "chat", "--input-len", "64"], "--input-len"),
    (["--dataset", "chat", "--range-ratio", "0.5"], "--range-ratio"),
    (["--dataset", "chat", "--no-calibrate"], "--no-calibrate"),
    (["--burstiness", "0.5"], "--burstiness"),                      # infinite rate: no gaps to shape
    (["--no-plots", "--plot-dir", "p"], "--plot-dir"),
])
def test_a_flag_the_run_would_ignore_is_refused(argv, named):
    with pytest.raises(ValueError, match=named):
        parse(*argv)


def test_random_only_defaults_still_apply():
    c = parse("--input-len", "64", "--range-ratio", "0.25")
    assert (c.workload.input_len, c.workload.range_ratio, c.load.burstiness) == (64, 0.25, 1.0)
    assert parse().workload.input_len == 256
