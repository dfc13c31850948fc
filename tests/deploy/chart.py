"""Rendering the Helm chart without helm: Helm's values rules here, its template engine in Go.

``helmrender`` (tests/deploy/helmrender/main.go) is Go's text/template + sprig + Helm's own
functions, built in GOPATH mode against Debian's golang-* packages (scripts/install.sh installs
them). Values are coalesced here as Helm does: the chart's values.yaml, then each values file in
order; maps merge deeply, anything else (lists included) is replaced, and null deletes a key.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s" / "tandem"
RENDERER = Path(__file__).with_name("helmrender")
GOPATH = "/usr/share/gocode"
SPRIG = Path(GOPATH) / "src" / "github.com" / "Masterminds" / "sprig"


class RenderError(RuntimeError):
    """The chart failed to render (e.g. a ``required`` value is missing); the message is Go's."""


def missing_toolchain() -> str | None:
    """Why the renderer cannot be built here, or None."""
    if shutil.which("go") is None:
        return "go is not installed (scripts/install.sh installs golang-go)"
    if not SPRIG.is_dir():
        return f"sprig is not at {SPRIG} (scripts/install.sh installs golang-github-masterminds-sprig-dev)"
    return None


def build_renderer(out_dir: Path) -> Path:
    binary = out_dir / "helmrender"
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOCACHE=str(out_dir / "gocache"), GOFLAGS="")
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=RENDERER, env=env, check=True,
                   capture_output=True, timeout=600)
    return binary


def coalesce(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = coalesce(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values(*files: str | Path, overrides: dict | None = None) -> dict:
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    for f in files:
        merged = coalesce(merged, yaml.safe_load((CHART / f).read_text()) or {})
    return coalesce(merged, overrides or {})


def render(binary: Path, vals: dict, release: str = "demo", namespace: str = "llm") -> list[dict]:
    """Every manifest the chart renders for ``vals``."""
    proc = subprocess.run([str(binary), str(CHART), release, namespace], input=json.dumps(vals),
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}
