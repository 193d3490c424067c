"""Precision that fits the hardware: what ``dtype: auto`` and ``precision: auto`` mean.

bf16 is only fast where the device computes it natively. On a CPU without AVX512-BF16 or AMX (an AVX2-only
machine) a bf16 matmul runs through emulation: measured 1.1-1.3 GFLOP/s against 63 GFLOP/s in fp32 on one core
(torch 2.13), about 50x slower. So:

* CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 (``16-mixed`` for training);
* CPU: bf16 when the CPU has AVX512-BF16 or AMX (x86) or BF16 (Arm) and neither ``ATEN_CPU_CAPABILITY`` nor
  ``ONEDNN_MAX_CPU_ISA`` restricts torch below those instructions, else fp32;
* anything else (MPS, ...): fp32.

The choice is logged once per process and device, with the reason.
"""

from __future__ import annotations

import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

_BF16_FLAGS = {"x86_64": ("avx512_bf16", "amx_bf16"), "aarch64": ("bf16",)}
_LOGGED: set[str] = set()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_capability() -> str:
    """torch's dispatch level for CPU kernels (``AVX2``, ``AVX512``, ...; honours ``ATEN_CPU_CAPABILITY``)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def cpu_bf16_reason() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why (in words, for the log and the benchmarks)."""
    machine = platform.machine().lower()
    flags = cpu_flags()
    have = [f for f in _BF16_FLAGS.get(machine, ()) if f in flags]
    if not have:
        return False, f"{machine} CPU without native bf16 (capability {cpu_capability()})"
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if aten and not aten.startswith("avx512") and machine == "x86_64":
        return False, f"ATEN_CPU_CAPABILITY={aten} restricts torch below AVX512"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if onednn and onednn != "ALL" and "BF16" not in onednn and "AMX" not in onednn:
        return False, f"ONEDNN_MAX_CPU_ISA={onednn} restricts oneDNN below its bf16 kernels"
    return True, f"{machine} CPU with {'/'.join(h.upper() for h in have)}"


def device_type(device: str | None = None) -> str:
    """``cuda`` | ``cpu`` | ``mps`` for a device string; None or ``auto``: cuda when available, else cpu."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device).split(":")[0]


def native_dtype(device: str | None = None) -> tuple[str, str]:
    """The fastest dtype that keeps bf16's range on ``device``, and why: ``(dtype, reason)``."""
    kind = device_type(device)
    if kind == "cuda":
        import torch

        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bfloat16", f"CUDA device {torch.cuda.get_device_name()} with bf16"
        return "float16", f"CUDA device {torch.cuda.get_device_name()} without bf16"
    if kind == "cpu":
        ok, why = cpu_bf16_reason()
        return ("bfloat16" if ok else "float32"), why
    return "float32", f"{kind} device"


def _log_once(what: str, value: str, reason: str) -> None:
    key = f"{what}={value}"
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("%s auto -> %s (%s)", what, value, reason)


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """``auto`` -> ``bfloat16`` | ``float16`` | ``float32`` for inference on ``device``; other names pass through."""
    if dtype != "auto":
        return dtype
    value, reason = native_dtype(device)
    _log_once(f"dtype on {device_type(device)}:", value, reason)
    return value


def resolve_precision(precision: str, accelerator: str | None = None) -> str:
    """Lightning precision: ``auto`` -> ``bf16-mixed`` | ``16-mixed`` | ``32-true`` for the accelerator."""
    if precision != "auto":
        return precision
    kind = device_type("cuda" if accelerator == "gpu" else accelerator)
    value, reason = native_dtype(kind)
    result = {"bfloat16": "bf16-mixed", "float16": "16-mixed"}.get(value, "32-true")
    _log_once(f"precision on {kind}:", result, reason)
    return result


def describe(device: str | None = None) -> dict[str, str]:
    """What benchmarks print beside every figure: device, CPU capability and the auto dtype with its reason."""
    kind = device_type(device)
    out = {"device": kind, "cpu": platform.processor() or platform.machine(), "cpu_capability": cpu_capability()}
    if kind == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name()
    value, reason = native_dtype(kind)
    out["auto_dtype"] = value
    out["auto_dtype_reason"] = reason
    return out
