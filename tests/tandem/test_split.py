"""The CPU split of `tandem up`: the documented policy for 1, 2, 8 and 64 cpus, cgroup quotas, and
`P:D` requests (tandem/split.py)."""

from __future__ import annotations

import pytest

from tandem.cli import main
from tandem.split import (Placement, auto_split, cgroup_cpu_quota, choose_split, colocated_split,
                          usable_cpus)


def placements(split):
    """{role: (cpus, threads)}, or {role: [...]} for a role with several workers."""
    out: dict = {}
    for role, p in split.workers:
        out.setdefault(role, []).append((p.cpus, p.threads))
    return {role: v[0] if len(v) == 1 else v for role, v in out.items()}


@pytest.mark.parametrize("n, prefill, decode", [
    (1, ((0,), 1), ((0,), 1)),                                  # one core: both share it
    (2, ((0,), 1), ((0, 1), 2)),                                # decode on both, prefill shares core 0
    (3, ((0,), 1), ((1, 2), 2)),
    (8, ((0, 1), 2), (tuple(range(2, 8)), 6)),                  # prefill ⌈n/4⌉, disjoint
    (64, (tuple(range(16)), 16), (tuple(range(16, 64)), 48)),
])
def test_auto_split_follows_the_documented_policy(n, prefill, decode):
    split = auto_split(tuple(range(n)))
    assert placements(split) == {"prefill": prefill, "decode": decode}
    assert f"auto, {n} usable cpu" in split.describe()


def test_usable_cpus_are_the_affinity_set_cut_to_the_cgroup_quota():
    assert usable_cpus({4, 5, 6, 7}, quota=None) == (4, 5, 6, 7)
    assert usable_cpus(set(range(64)), quota=2.0) == (0, 1)      # a 2-cpu container on a 64-core host
    assert usable_cpus(set(range(64)), quota=1.5) == (0, 1)      # a partial cpu counts as one
    assert usable_cpus({3, 9}, quota=0.2) == (3,)
    assert placements(auto_split(usable_cpus(set(range(64)), quota=8))) == {
        "prefill": ((0, 1), 2), "decode": ((2, 3, 4, 5, 6, 7), 6)}


def test_cgroup_quota_is_the_tightest_limit_on_the_path(tmp_path):
    root = tmp_path / "cg"
    (root / "kube" / "pod").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kube" / "cpu.max").write_text("400000 100000\n")
    (root / "kube" / "pod" / "cpu.max").write_text("250000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kube/pod\n")
    assert cgroup_cpu_quota(root, proc) == 2.5
    (root / "kube" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.5
    proc.write_text("0::/\n")
    assert cgroup_cpu_quota(root, proc) is None                 # "max": unlimited


def test_cgroup_v1_quota(tmp_path):
    d = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    d.mkdir(parents=True)
    (d / "cpu.cfs_quota_us").write_text("300000\n")
    (d / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 3.0
    assert cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None


def test_an_explicit_split_puts_prefill_first_and_decode_last():
    assert placements(choose_split("1:1", (0, 1))) == {"prefill": ((0,), 1), "decode": ((1,), 1)}
    assert placements(choose_split("2:2", (0, 1))) == {"prefill": ((0, 1), 2), "decode": ((0, 1), 2)}
    assert placements(choose_split("1:3", (0, 1, 2, 3))) == {"prefill": ((0,), 1), "decode": ((1, 2, 3), 3)}
    unpinned = choose_split("auto", (0, 1), pin=False)
    assert placements(unpinned) == {"prefill": ((), 1), "decode": ((), 2)}
    assert "not pinned" in unpinned.describe()
    assert colocated_split((0, 1)).workers == (("colocated", Placement((0, 1), 2)),)


def test_several_decode_workers_get_disjoint_cores_from_the_last():
    two = choose_split("1:2x1", (0, 1))
    assert placements(two) == {"prefill": ((0,), 1), "decode": [((0,), 1), ((1,), 1)]}
    assert two.describe() == ("prefill 1 thread on cpu 0, decode 1 thread on cpu 0, "
                              "decode 1 thread on cpu 1 (1:2x1, 2 usable cpus)")
    assert placements(choose_split("2:3x2", tuple(range(8)))) == {
        "prefill": ((0, 1), 2), "decode": [((2, 3), 2), ((4, 5), 2), ((6, 7), 2)]}


@pytest.mark.parametrize("spec, message", [
    ("3:1", "prefill needs 1 to 2 threads"), ("0:2", "prefill needs 1 to 2"), ("1:3", "1 to 2 between"),
    ("1:2x2", "1 to 2 between"), ("1:0x1", "1 to 2 between"), ("fast", "'auto', 'P:D' or 'P:WxD'"),
    ("1:2:3", "'auto', 'P:D'")])
def test_a_split_the_machine_cannot_give_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        choose_split(spec, (0, 1))


def test_tandem_up_refuses_a_bad_split_before_starting_anything(capsys, monkeypatch):
    monkeypatch.setattr("tandem.up.usable_cpus", lambda: (0, 1))
    assert main(["up", "--split", "5:1"]) == 2
    assert "--split: split 5:1: prefill needs 1 to 2 threads" in capsys.readouterr().err
    assert main(["up", "--colocated", "--split", "1:1"]) == 2
    assert "does not apply" in capsys.readouterr().err
    monkeypatch.setenv("TANDEM_SPLIT", "one")
    assert main(["up"]) == 2
    assert "TANDEM_SPLIT" in capsys.readouterr().err


def test_a_decode_worker_on_cores_of_the_prefill_worker_leaves_them_while_it_prefills():
    shared = lambda split: [p.shared for role, p in split.workers if role == "decode"]  # noqa: E731
    assert shared(auto_split((0, 1))) == [1]
    assert "2 threads on cpus 0-1 (1 while prefill runs)" in auto_split((0, 1)).describe()
    assert shared(auto_split((0,))) == [0]                   # one core: one thread either way
    assert shared(auto_split(tuple(range(8)))) == [0]        # disjoint cores
    assert shared(choose_split("2:2", (0, 1))) == [1]         # keeps at least one thread
    assert shared(choose_split("2:3", (0, 1, 2))) == [2]
    assert shared(choose_split("1:1", (0, 1))) == [0]
    assert shared(choose_split("1:2x1", (0, 1))) == [0, 0]    # one-thread workers keep their thread
    assert shared(choose_split("auto", (0, 1), pin=False)) == [0]
