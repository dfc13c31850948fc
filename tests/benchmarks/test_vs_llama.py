"""benchmarks/vs_llama.py's pure parts: its arguments, the deployments and load it plans, the table
and its place in docs/benchmarks.md (the benchmark itself is run by hand, not in CI)."""

from __future__ import annotations

import argparse
import shlex
import stat
from pathlib import Path

import pytest

from tandem.bench.cli import add_arguments, build_config

from benchmarks.vs_llama import BEGIN, END, make_plan, parse_args, render, replace_section


def fake_binary(tmp_path: Path) -> Path:
    path = tmp_path / "llama-server"
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_without_llama_server_only_the_tandem_rows_are_planned():
    plan = make_plan(parse_args(["--splits", "auto,1:1"]), threads=2)
    assert [d.name for d in plan.deployments] == ["tandem P/D auto", "tandem P/D 1:1", "tandem colocated"]
    assert "--split 1:1" in plan.deployments[1].command and "--colocated" in plan.deployments[2].command
    assert len({d.url for d in plan.deployments}) == 3                  # each on its own port
    assert plan.concurrency == (1, 8, 32) and plan.num_requests(32) == 64


def test_a_tandem_env_variant_is_a_pd_row_started_with_those_settings():
    plan = make_plan(parse_args(["--splits", "auto,1:1", "--no-colocated", "--tandem-env",
                                 "int4:TANDEM_DTYPE=bfloat16,TANDEM_WEIGHTS=int4"]), threads=2)
    assert [d.name for d in plan.deployments] == ["tandem P/D auto", "tandem P/D 1:1", "tandem P/D auto int4"]
    argv = shlex.split(plan.deployments[2].command)
    assert argv[:3] == ["env", "TANDEM_DTYPE=bfloat16", "TANDEM_WEIGHTS=int4"]
    assert argv[-4:] == ["--port", plan.deployments[2].url.split(":")[-1].split("/")[0], "--split", "auto"]


def test_llama_server_gets_the_threads_slots_and_context_of_the_run(tmp_path):
    args = parse_args(["--llama-server", str(fake_binary(tmp_path)), "--gguf", "m.Q4_1.gguf",
                       "--gguf", "m.F32.gguf", "--no-colocated", "--splits", "", "--llama-args=--no-repack"])
    plan = make_plan(args, threads=2)
    assert [d.name for d in plan.deployments] == ["llama-server Q4_1", "llama-server F32"]
    argv = shlex.split(plan.deployments[0].command)
    opt = dict(zip(argv[1::2], argv[2::2]))
    assert opt["-m"] == "m.Q4_1.gguf" and opt["-t"] == "2" and opt["-np"] == "32"
    assert int(opt["-c"]) >= 32 * (128 + 128)                            # every slot fits a request
    assert argv[-1] == "--no-repack"


def test_the_bench_load_is_greedy_ignore_eos_closed_loop():
    plan = make_plan(parse_args(["--quick", "--input-len", "64"]), threads=2)
    assert plan.concurrency == (1, 8)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = build_config(parser.parse_args(["--base-url", "http://127.0.0.1:1/v1",
                                             *plan.bench_argv("SmolLM2-135M-Instruct", 8)]))
    assert config.load.closed_loop and config.load.concurrency == 8
    assert config.load.num_requests == 8 and config.load.warmup == 4
    assert config.temperature == 0 and config.ignore_eos and config.workload.input_len == 64
    assert config.workload.output_len == 128 and config.plot_dir is None
    assert config.seed == 8 and build_config(parser.parse_args([
        "--base-url", "http://127.0.0.1:1/v1", *plan.bench_argv("m", 32)])).seed == 32   # no shared prompts


@pytest.mark.parametrize("argv, message", [
    (["--gguf", "x.gguf"], "give --llama-server too"),
    (["--llama-server", "/nonexistent/llama-server"], "not an executable file"),
    (["--output-len", "0"], "must be >= 1"),
    (["--rounds", "0"], "must be >= 1"),
    (["--tandem-env", "int4"], "expected NAME:VAR=V"),
    (["--tandem-env", "x:PATH=/tmp"], "only TANDEM_* settings"),
    (["--tandem-env", "x:TANDEM_WEIGHTS=int4", "--splits", ""], "give one"),
])
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def point(tok_s: float, ttft: float, tpot: float) -> dict:
    return {"output_throughput": tok_s, "failed": 0, "ttft_ms": {"median": ttft}, "tpot_ms": {"median": tpot}}


def summary() -> dict:
    return {
        "machine": {"date": "2026-12-01 16:00 UTC", "commit": "abc1234", "Model name": "Xeon",
                    "usable_cpus": 2, "cgroup_cpu_quota": None, "cpu_flags": ["avx2", "amx_bf16"],
                    "torch": "2.13.0+cpu"},
        "limits": [{"label": "start", "load": (3.0, 2.0, 1.0), "fp32_gflops": 150.0, "bf16_gflops": 600.0,
                    "bandwidth_gbps": 40.0}],
        "plan": {"concurrency": [1, 32], "input_len": 128, "output_len": 128, "requests_per_user": 2},
        "runs": [{"deployment": "llama-server Q4_1", "load_before": (2.0, 0, 0), "load_after": (2.5, 0, 0),
                  "points": {"1": point(40.0, 50, 20), "32": point(80.0, 900, 300)}},
                 {"deployment": "tandem P/D auto", "load_before": (2.5, 0, 0), "load_after": (3.1, 0, 0),
                  "points": {"1": point(10.0, 120, 100), "32": point(60.0, 2000, 500)}}],
    }


def test_the_table_has_a_ratio_to_llama_server_per_concurrency_and_the_machine_line():
    text = render(summary())
    assert "flags avx2 amx_bf16" in text and "fp32 150 / bf16 600 GFLOP/s, 40 GB/s" in text
    assert "| 1 | tandem P/D auto | 10.0 | 0.25× | 120 | 100 | 0 | 2.5 → 3.1 |" in text
    assert "| 32 | tandem P/D auto | 60.0 | 0.75× |" in text
    assert "| 32 | llama-server Q4_1 | 80.0 | 1.00× |" in text
    assert "÷ llama-server Q4_1" in text


def test_the_table_replaces_only_its_own_section():
    doc = f"# Benchmarks\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## 9. next\n"
    new = replace_section(doc, "new table")
    assert new == f"# Benchmarks\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\n## 9. next\n"
    assert replace_section("# B\n", "t").endswith(f"{BEGIN}\nt\n{END}\n")


def test_rounds_alternate_the_order_and_a_ratio_is_the_median_of_same_round_ratios():
    plan = make_plan(parse_args(["--splits", "auto,1:1", "--rounds", "3"]), threads=2)
    assert plan.rounds == 3
    assert [d.name for d in plan.order(1)] == [d.name for d in plan.order(0)][::-1]
    assert plan.order(2) == plan.order(0)
    s = summary()
    s["plan"]["concurrency"] = [1]
    llama = [40.0, 20.0, 40.0]          # the machine slowed down in round 1, for both
    tandem = [38.0, 21.0, 44.0]         # same-round ratios 0.95, 1.05, 1.10
    s["runs"] = [{"deployment": name, "round": rnd, "load_before": (1.0, 0, 0), "load_after": (2.0, 0, 0),
                  "points": {"1": point(tok[rnd], 100 + rnd, 20 + rnd)}}
                 for rnd in range(3) for name, tok in (("llama-server Q4_1", llama), ("tandem P/D auto", tandem))]
    text = render(s)
    assert "3 rounds in alternating order" in text and "÷ per round" in text
    # median tok/s 38.0, median of the same-round ratios 1.05 (not 38.0 / 40.0 = 0.95)
    assert "| 1 | tandem P/D auto | 38.0 | 1.05× | 0.95 / 1.05 / 1.10 | 101 | 21 | 0 |" in text
    assert "| 1 | llama-server Q4_1 | 40.0 | 1.00× | 1.00 / 1.00 / 1.00 |" in text
