"""Regenerates the Python stubs from protos/tandem/v1/*.proto: ``python -m protos.build``.

The generated ``*_pb2*.py`` files are committed; tests/protos/test_stubs.py fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(out_dir: Path = ROOT) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted((ROOT / "protos").rglob("*.proto"))
    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            f"--pyi_out={out_dir}", *[str(p.relative_to(ROOT)) for p in protos]]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return [out_dir / p.relative_to(ROOT).with_name(p.stem + suffix)
            for p in protos for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")]


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
