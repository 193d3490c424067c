"""``dtype: auto`` / ``precision: auto``: bf16 only where the device computes it natively (tuna.precision)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tuna import precision


@pytest.fixture()
def fake_cpu(monkeypatch):
    """Pretend to be an x86_64 CPU with the given flags (and no env restrictions)."""

    def set_flags(*flags: str) -> None:
        precision.cpu_flags.cache_clear()
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
        monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    return set_flags


@pytest.mark.parametrize(
    ("flags", "env", "dtype", "prec"),
    [
        (("avx2", "fma"), {}, "float32", "32-true"),
        (("avx2", "avx512f"), {}, "float32", "32-true"),  # AVX512 without BF16 emulates bf16: slow
        (("avx2", "avx512f", "avx512_bf16"), {}, "bfloat16", "bf16-mixed"),
        (("avx2", "amx_bf16", "amx_tile"), {}, "bfloat16", "bf16-mixed"),
        (("avx2", "avx512f", "avx512_bf16"), {"ATEN_CPU_CAPABILITY": "avx2"}, "float32", "32-true"),
        (("avx2", "avx512f", "avx512_bf16"), {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32", "32-true"),
        (("avx2", "avx512f", "avx512_bf16"), {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "bfloat16", "bf16-mixed"),
    ],
)
def test_cpu_choice(fake_cpu, monkeypatch, flags, env, dtype, prec):
    fake_cpu(*flags)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert precision.resolve_dtype("auto", "cpu") == dtype
    assert precision.resolve_precision("auto", "cpu") == prec
    # explicit settings are never changed
    assert precision.resolve_dtype("float16", "cpu") == "float16"
    assert precision.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_cuda_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve_dtype("auto", "cuda") == "bfloat16"
    assert precision.resolve_precision("auto", "gpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)  # e.g. a V100
    assert precision.resolve_dtype("auto", "cuda:1") == "float16"
    assert precision.resolve_precision("auto", "cuda") == "16-mixed"


def test_choice_is_logged_once(fake_cpu, caplog):
    fake_cpu("avx2")
    precision._LOGGED.clear()
    with caplog.at_level("INFO", logger="tuna.precision"):
        for _ in range(3):
            precision.resolve_precision("auto", "cpu")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "32-true" in lines[0] and "without native bf16" in lines[0]


_PROBE = r"""
import json, time, torch
from tuna import precision
torch.set_num_threads(1)

def best(dt):
    a, b = torch.randn(256, 512, dtype=dt), torch.randn(512, 512, dtype=dt)
    a @ b
    ts = []
    for _ in range(7):
        t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
    return min(ts)

print(json.dumps({"auto": precision.resolve_dtype("auto", "cpu"), "fp32": best(torch.float32), "bf16": best(torch.bfloat16),
                  "capability": precision.cpu_capability()}))
"""


def _probe(**env: str) -> dict:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=full, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_choice_is_fast(r: dict) -> None:
    if r["auto"] == "bfloat16":
        # chose bf16: it must really be fast here (a generous bound; emulated bf16 is ~50x slower)
        assert r["bf16"] < 3 * r["fp32"], r
    else:
        # chose fp32: bf16 must not be clearly faster (no speed left on the table)
        assert r["bf16"] > 0.8 * r["fp32"], r


def test_auto_choice_is_the_fast_one_on_this_cpu():
    """Measured, not assumed: the dtype auto picks on this machine is the faster one of bf16 and fp32."""
    _check_choice_is_fast(_probe())


def test_auto_avoids_bf16_when_torch_is_restricted_to_avx2():
    """ATEN_CPU_CAPABILITY=avx2 + ONEDNN_MAX_CPU_ISA=AVX2 turn any x86 CPU into the AVX2-only machine (bf16 emulated)."""
    if precision.platform.machine().lower() != "x86_64":
        pytest.skip("x86-only environment switches")
    r = _probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert r["capability"] == "AVX2" and r["auto"] == "float32", r
    _check_choice_is_fast(r)
    assert r["bf16"] > 5 * r["fp32"], r  # the reason for all this: emulated bf16 is many times slower

