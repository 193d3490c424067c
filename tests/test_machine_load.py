"""The load meter: this process's CPU is its own, another process's CPU is 'other', and a step records both."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuna.machine_load import CpuMeter, describe_load, is_loaded
from tuna_recipes.pipeline.manifest import Manifest

linux_only = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@linux_only
def test_own_cpu_is_not_other_and_an_unreaped_process_is():
    meter = CpuMeter()
    spin(0.6)
    own = meter.reading()
    assert own is not None and own["own_core_s"] >= 0.5

    # another process computing: its CPU is not this process's until it is waited for, so it counts as other
    meter = CpuMeter()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 1.0\n"
                              "while time.process_time() < end: pass"])
    deadline = time.monotonic() + 60
    while state(child.pid) != "Z" and time.monotonic() < deadline:  # finished, not yet reaped
        time.sleep(0.05)
    assert state(child.pid) == "Z"
    loaded = meter.reading()
    child.wait()
    assert loaded is not None and loaded["other_core_s"] >= 0.8, loaded
    assert loaded["own_core_s"] < 0.8, loaded  # the sleeping parent itself used little
    assert is_loaded(loaded) and "other processes" in describe_load(loaded)

    # once waited for, a child's CPU is this run's (a llama.cpp server the step started and stopped)
    meter = CpuMeter()
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.8\n"
                    "while time.process_time() < end: pass"], check=True)
    reaped = meter.reading()
    assert reaped is not None and reaped["own_core_s"] >= 0.7, reaped


def test_counters_arithmetic(tmp_path: Path):
    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  {100 * tick} 0 {50 * tick} {1000 * tick} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    meter = CpuMeter(str(stat))
    # 3 s of user, 1 s of system, 0.5 s of irq, 2 s stolen by the hypervisor
    stat.write_text(f"cpu  {103 * tick} 0 {51 * tick} {1001 * tick} 0 {tick // 2} 0 {2 * tick} 0 0\n")
    r = meter.reading()
    assert r is not None
    assert r["other_core_s"] == pytest.approx(4.5 - r["own_core_s"], abs=0.1)
    assert r["steal_core_s"] == pytest.approx(2.0)
    assert is_loaded(r) and "hypervisor" in describe_load(r)


def test_no_counters(tmp_path: Path):
    meter = CpuMeter(str(tmp_path / "absent"))
    assert meter.reading() is None and not is_loaded(None)
    assert "not measured" in describe_load(None)


@linux_only
def test_a_step_records_its_machine_load(tmp_path: Path):
    man = Manifest(tmp_path, {})
    man.run("busy", {"x": 1}, [], lambda: spin(0.3))
    load = man.data["steps"]["busy"]["machine_load"]
    assert set(load) == {"wall_s", "cores", "own_core_s", "other_core_s", "steal_core_s", "other_share", "steal_share"}
    assert load["own_core_s"] >= 0.2 and load["cores"] == (os.cpu_count() or 1)
