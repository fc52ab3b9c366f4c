"""CPU threads follow the cores a process is given: its affinity, a cgroup CPU quota, or DOMIX_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from domix.errors import DomixError
from domix.system import configure_threads, cores_given


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads, the second half-used
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),  # no limit
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path, files, cores):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert cores_given(tmp_path) == (min(affinity, cores) if cores else affinity)


def test_domix_threads_decides_and_a_bad_value_is_refused(monkeypatch, threads_restored):
    monkeypatch.setenv("DOMIX_THREADS", "1")
    assert configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("DOMIX_THREADS", "two")
    with pytest.raises(DomixError, match="DOMIX_THREADS='two' is not a number of threads"):
        configure_threads()


def test_without_a_setting_the_threads_are_the_cores_given(monkeypatch, threads_restored):
    monkeypatch.delenv("DOMIX_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(7)
    assert configure_threads() == cores_given() == torch.get_num_threads()


def test_the_command_refuses_a_bad_thread_count_in_one_line(tmp_path):
    env = {**os.environ, "DOMIX_THREADS": "0.5"}
    out = subprocess.run([sys.executable, "-m", "domix", "report", str(tmp_path)], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["domix: error: DOMIX_THREADS='0.5' is not a number of threads; set it to a whole number "
                                               "such as 2, or unset it"]
