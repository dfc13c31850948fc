import subprocess
import sys

import pytest



@pytest.mark.slow
def test_generate_streams_answer_and_prints_timings():
    r = subprocess.run([sys.executable, "-m", "tandem.cli", "generate", "What is the capital of France?",
                        "--max-tokens", "20"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "completion_tokens=" in r.stderr and "prefill_time=" in r.stderr


@pytest.mark.slow
def test_generate_rejects_bad_input_with_the_field_name():
    r = subprocess.run([sys.executable, "-m", "tandem.cli", "generate", "hi", "--top-p", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "top_p" in r.stderr


def test_a_worker_without_a_secret_refuses_to_start():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TANDEM_WORKER_SECRET", "TANDEM_INSECURE_WORKERS")}
    for role in ("prefill", "decode"):
        done = subprocess.run([sys.executable, "-m", "tandem.cli", role], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "TANDEM_WORKER_SECRET" in done.stderr and "TANDEM_INSECURE_WORKERS=1" in done.stderr


@pytest.mark.parametrize("args, named", [(["--prefill", "0"], "--prefill"), (["--decode", "-1"], "--decode"),
                                         (["--worker-cpus", "0"], "--worker-cpus")])
def test_ray_up_refuses_a_deployment_without_workers_before_starting_anything(tmp_path, args, named):
    import os

    done = subprocess.run([sys.executable, "-m", "tandem.cli", "ray", "up", *args],
                          env=dict(os.environ, TANDEM_DATA_DIR=str(tmp_path)), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and named in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []     # no Redis, no Ray, no address recorded


@pytest.mark.parametrize("env, weights", [
    ({}, {"prefill": "dense", "decode": "dense", "colocated": "dense"}),
    ({"TANDEM_WEIGHTS": "int4"}, {"prefill": "int4", "decode": "int4", "colocated": "int4"}),
    ({"TANDEM_WEIGHTS": "int4", "TANDEM_PREFILL_WEIGHTS": "dense"},
     {"prefill": "dense", "decode": "int4"}),
    ({"TANDEM_WEIGHTS": "int4", "TANDEM_PREFILL_WEIGHTS": "int4"}, {"prefill": "int4", "decode": "int4",
                                                                   "colocated": "int4"}),
])
def test_each_role_runs_the_weights_its_settings_give(monkeypatch, env, weights):
    import argparse

    from tandem.cli import engine_config

    for name in ("TANDEM_WEIGHTS", "TANDEM_PREFILL_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for role, expected in weights.items():
        args = argparse.Namespace(command=role, model="", dtype="bfloat16", device="cpu", max_num_seqs=8)
        assert engine_config(args).weights == expected, role


def test_the_settings_offer_exactly_the_engines_weights_and_norms():
    import typing

    from services.engine.config import RMS_NORMS, WEIGHTS
    from tandem.settings import Settings

    assert typing.get_args(Settings.model_fields["rms_norm"].annotation) == RMS_NORMS
    assert typing.get_args(Settings.model_fields["weights"].annotation) == WEIGHTS


@pytest.mark.parametrize("value", ["", "reference", "fused"])
def test_every_worker_computes_rms_norm_as_tandem_rms_norm_says(monkeypatch, value):
    import argparse

    from tandem.cli import engine_config

    monkeypatch.delenv("TANDEM_RMS_NORM", raising=False)
    if value:
        monkeypatch.setenv("TANDEM_RMS_NORM", value)
    for role in ("prefill", "decode", "colocated"):
        args = argparse.Namespace(command=role, model="", dtype="float32", device="cpu", max_num_seqs=8)
        assert engine_config(args).rms_norm == (value or "reference"), role


def test_an_engine_doing_both_phases_refuses_prefill_weights_that_differ(tmp_path):
    import os

    env = {**os.environ, "TANDEM_WEIGHTS": "int4", "TANDEM_PREFILL_WEIGHTS": "dense",
           "TANDEM_DTYPE": "bfloat16", "TANDEM_DATA_DIR": str(tmp_path), "TANDEM_INSECURE_WORKERS": "1"}
    for argv in (["colocated"], ["up", "--colocated", "--port", "1"], ["generate", "hi"]):
        done = subprocess.run([sys.executable, "-m", "tandem.cli", *argv], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "TANDEM_PREFILL_WEIGHTS=dense" in done.stderr, done.stderr
        assert "prefills and decodes with one set of weights" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "tandem.cli", "settings"], capture_output=True, text=True,
                          env={**env, "TANDEM_PREFILL_WEIGHTS": "int8"}, timeout=60)
    assert done.returncode == 2 and "TANDEM_PREFILL_WEIGHTS" in done.stderr
