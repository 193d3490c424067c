"""What every benchmark prints beside its figures: device, CPU capability and precision (``tuna.precision``)."""

from __future__ import annotations

import platform


def env_info(device: str, precision: str) -> dict[str, str]:
    """Device, CPU, torch's CPU capability, the precision the figures were measured in, and what ``auto`` would
    choose here (``tuna.precision.describe``), plus the torch and transformers versions."""
    import torch
    import transformers

    from tuna.precision import describe

    return {**describe(device), "cpu_model": cpu_model(), "precision": precision, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's machine name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def env_tag(info: dict[str, str]) -> str:
    """``[NVIDIA H200 | CPU AVX2 | bf16-autocast]``: the short form printed on every figure line."""
    where = info.get("gpu") or info.get("cpu_model") or info["device"]
    return f"[{where} | CPU {info['cpu_capability']} | {info['precision']}]"
