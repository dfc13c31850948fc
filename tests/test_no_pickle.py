"""No pickle, eval or exec on any network path: the services, the gateway, the CLI and the protos
(docs/architecture.md "The closed internal network"). Comments and docstrings may name them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "gateway", "tandem", "protos")
BANNED_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}


def offences(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
                found.append(f"{f.id}()")
            elif isinstance(f, ast.Attribute) and f.attr == "load" and getattr(f.value, "id", "") == "torch":
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                if not weights_only or getattr(weights_only[0].value, "value", None) is not True:
                    found.append("torch.load without weights_only=True (it unpickles)")
    return [f"{path.relative_to(ROOT)}:{o}" for o in found]


def test_no_pickle_or_eval_on_a_network_path():
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 20
    assert [o for p in files for o in offences(p)] == []


def test_the_grep_finds_what_it_bans(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom marshal import loads\neval('1')\nimport torch\ntorch.load('x')\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        assert len(offences(bad)) == 4
    finally:
        ROOT = old
