"""The committed gRPC stubs must match what protos/build.py generates from the .proto files."""

from protos.build import ROOT, generate


def test_committed_stubs_are_fresh(tmp_path):
    for fresh in generate(tmp_path):
        committed = ROOT / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} missing: run python -m protos.build"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run python -m protos.build"


def test_every_proto_field_is_commented():
    for proto in (ROOT / "protos").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            code = line.split("//")[0].strip()
            if code.endswith(";") and "=" in code and not code.startswith(("syntax", "option")):
                assert "//" in line or lines[i - 1].strip().startswith("//"), \
                    f"{proto.name}:{i + 1} has no comment: {line.strip()}"
