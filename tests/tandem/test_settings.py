"""TANDEM_* settings: typed, validated at start with the variable named, documented in one table."""

import subprocess
import sys

import pytest

from tandem.settings import Settings, SettingsError, table


def test_defaults_and_typed_values(tmp_path):
    s = Settings.from_env({"TANDEM_CACHE_DIR": str(tmp_path), "TANDEM_KV_CACHE_GB": "0.5",
                           "TANDEM_DTYPE": "bfloat16", "TANDEM_HELD_KV_GB": "0.25",
                           "TANDEM_TEST_HOOKS": "true", "TANDEM_REQUEST_TIMEOUT_S": "30",
                           "OTHER": "ignored"})
    assert s.cache_dir == tmp_path and s.kv_cache_gb == 0.5 and s.dtype == "bfloat16"
    assert s.held_kv_gb == 0.25 and s.test_hooks is True and s.request_timeout_s == 30
    d = Settings.from_env({})
    assert d.held_kv_gb == 1 and d.test_hooks is False and d.request_timeout_s == 600
    assert d.kv_cache_bytes == 2 << 30 and d.sse_keepalive_s == 15


@pytest.mark.parametrize("name, value", [
    ("TANDEM_TEST_HOOKS", "ture"), ("TANDEM_KV_CACHE_GB", "lots"), ("TANDEM_KV_CACHE_GB", "-1"),
    ("TANDEM_DTYPE", "int3"), ("TANDEM_DEVICE", "tpu"), ("TANDEM_REQUEST_TIMEOUT_S", "0"),
    ("TANDEM_RESPONSE_TTL_SECONDS", "1.5"), ("TANDEM_FULL_TEXT", "maybe"),
])
def test_a_bad_value_is_refused_with_the_variable_named(name, value):
    with pytest.raises(SettingsError, match=f"^{name}="):
        Settings.from_env({name: value})


def test_the_cli_refuses_a_bad_value_at_start():
    r = subprocess.run([sys.executable, "-m", "tandem.cli", "settings"], capture_output=True,
                       text=True, timeout=60, env={"TANDEM_TEST_HOOKS": "ture", "PATH": ""})
    assert r.returncode == 2 and "TANDEM_TEST_HOOKS='ture'" in r.stderr


def test_every_setting_is_documented_in_the_table():
    text = table()
    for name, field in Settings.model_fields.items():
        assert f"TANDEM_{name.upper()}" in text and field.description
