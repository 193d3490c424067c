"""Which llama.cpp build serves the embedded judge, and a check that the installed one can run on this CPU.

``llama-cpp-python`` compiles llama.cpp when it is installed, by default with ``-march=native``: the library then
holds whatever the build machine's CPU offers. Two ways that goes wrong, both seen on this project's machines:

* On an Intel Xeon with AMX running in a VM, ggml's AMX kernels fault at their first ``ldtilecfg``
  (``ggml_backend_amx_mul_mat``, SIGSEGV) as soon as a prompt is longer than a few tokens, although the CPU
  executes AMX instructions (a hand-written ``ldtilecfg`` runs there). The server dies on its first real request.
* pip caches the wheel it built, keyed by the source archive only: a wheel built natively on an AVX512 machine is
  reused on an AVX2-only one and dies there with SIGILL.

So the set-up (``scripts/setup.sh``, which calls ``python -m tuna.feedback.llamacpp_build install``) never builds
natively on x86-64. It picks the highest portable instruction-set level of the running CPU (:data:`PROFILES`,
never with AMX), builds the wheel once into a cache keyed by (version, profile, flags), installs it, and records the
choice beside the venv; the choice and its reason are logged once. Before a llama.cpp server starts,
:func:`ensure_runnable` checks the installed libraries themselves: it disassembles them (``objdump``) and refuses,
with the fix in one line, a library that holds AMX instructions or any instruction-set extension this CPU lacks,
so a wrong build is an error message, not a dead server. Other architectures keep llama.cpp's own build.

Set ``TUNA_LLAMA_CMAKE_ARGS`` to build with flags of your own (a CUDA build, say); the check still applies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tuna.errors import TunaError
from tuna.precision import cpu_flags

log = logging.getLogger(__name__)

PACKAGE = "llama-cpp-python"
STAMP = "tuna-llamacpp-build.json"
"""Written into the venv (``sys.prefix``) by ``install``: the profile, its reason, the flags and the library hashes."""
CMAKE_ENV = "TUNA_LLAMA_CMAKE_ARGS"

_OFF = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
_V2 = ["-DGGML_SSE42=ON", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF", "-DGGML_BMI2=OFF",
       "-DGGML_AVX512=OFF"]
_V3 = ["-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
       "-DGGML_AVX512=OFF"]


@dataclass(frozen=True)
class Profile:
    name: str
    needs: tuple[str, ...]
    """The /proc/cpuinfo flags a CPU must have to run this build."""
    cmake_args: tuple[str, ...]
    what: str


PROFILES: tuple[Profile, ...] = (
    Profile("x86-64-v3", ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"), tuple(_OFF + _V3),
            "AVX2, FMA, F16C, BMI2; AVX512 and AMX kernels left out"),
    Profile("x86-64-v2", ("sse4_2",), tuple(_OFF + _V2), "SSE4.2 only; no AVX"),
)
"""Portable x86-64 levels, best first. AVX512 is left out on purpose: on the AVX512-BF16/AMX Xeon an AVX512 build
(no AMX) took 0.90x the CPU time of this AVX2 build for a 401-token judge prompt and 1.02x for decoding
(benchmarks/llamacpp_levels.py, results/benchmarks/llamacpp_levels.json): not worth a third build to keep working."""

NATIVE = Profile("native", (), (), "llama.cpp's own build for this architecture (not x86-64: no AMX, no check)")


def machine() -> str:
    return platform.machine().lower()


def choose_profile(flags: frozenset[str] | None = None, arch: str | None = None) -> tuple[Profile, str]:
    """The build for a CPU (default: this one), and why."""
    arch = arch or machine()
    custom = os.environ.get(CMAKE_ENV)
    if custom is not None:
        return Profile("custom", (), tuple(custom.split()), f"${CMAKE_ENV}"), f"{CMAKE_ENV} is set"
    if arch not in ("x86_64", "amd64"):
        return NATIVE, f"{arch} CPU"
    flags = cpu_flags() if flags is None else flags
    amx = " (its AMX is never used: ggml's AMX kernels fault in VMs)" if "amx_tile" in flags else ""
    for p in PROFILES:
        if all(f in flags for f in p.needs):
            return p, f"x86-64 CPU with {', '.join(f.upper() for f in p.needs[1:]) or 'SSE4.2'}{amx}"
    raise TunaError("this x86-64 CPU lacks SSE4.2, which every llama.cpp build needs")


def pinned_requirement(pyproject: Path | None = None) -> str:
    """The ``llama-cpp-python==X`` pin of pyproject's ``server`` extra (the one place the version is set)."""
    p = pyproject or Path(__file__).resolve().parents[2] / "pyproject.toml"
    m = re.search(r'"llama-cpp-python\[server\]==([0-9][^"\s]*)"', p.read_text(encoding="utf-8")) if p.exists() else None
    if not m:
        raise TunaError("no llama-cpp-python[server]==<version> pin in the server extra", path=p)
    return m.group(1)


# ----------------------------------------------------------------------------------------------- building


def wheel_dir(version: str, profile: Profile, cache: Path | None = None) -> Path:
    root = cache or Path(os.environ.get("TUNA_WHEELS", Path.home() / ".cache" / "tuna" / "wheels"))
    key = hashlib.sha256(" ".join(profile.cmake_args).encode()).hexdigest()[:10]
    return root / f"{PACKAGE}-{version}-{profile.name}-{key}"


def build_wheel(version: str, profile: Profile, cache: Path | None = None) -> Path:
    """The wheel for ``profile``, built once (pip's own wheel cache is bypassed: it ignores the build flags)."""
    out = wheel_dir(version, profile, cache)
    found = sorted(out.glob("llama_cpp_python-*.whl"))
    if found:
        return found[-1]
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(profile.cmake_args))
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    print(f"building {PACKAGE} {version} for {profile.name} ({profile.what}); once per machine kind, about 5 minutes on 2 "
          f"cores -> {out}", flush=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "--no-binary", PACKAGE,
           f"{PACKAGE}=={version}", "-w", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    found = sorted(out.glob("llama_cpp_python-*.whl"))
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise TunaError(f"building {PACKAGE} {version} for {profile.name} failed (status {proc.returncode}):\n{tail}")
    return found[-1]


def library_dir() -> Path | None:
    """The installed ``llama_cpp/lib`` folder (None when llama-cpp-python is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return d if d.is_dir() else None


def libraries(lib_dir: Path) -> list[Path]:
    """The shared libraries of a build, each once (not their version-numbered links)."""
    out, seen = [], set()
    for p in sorted(lib_dir.glob("*.so*")) + sorted(lib_dir.glob("*.dylib")):
        real = p.resolve()
        if real in seen or not real.is_file():
            continue
        seen.add(real)
        out.append(real)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install(cache: Path | None = None) -> dict[str, object]:
    """Choose, build (once) and install the llama.cpp build for this CPU into the running Python; record it."""
    version = pinned_requirement()
    profile, reason = choose_profile()
    print(f"llama.cpp build: {profile.name} ({profile.what}): {reason}", flush=True)
    if profile is NATIVE:
        args = [sys.executable, "-m", "pip", "install", "-q", f"{PACKAGE}[server]=={version}"]
    else:
        wheel = build_wheel(version, profile, cache)
        # the extras' dependencies from the index, llama-cpp-python itself only from the wheel built here
        args = [sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)]
    subprocess.run(args, check=True)
    if profile is not NATIVE:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{PACKAGE}[server]=={version}",
                        "--find-links", str(wheel.parent), "--only-binary", PACKAGE], check=True)
    lib = library_dir()
    stamp = {"package": PACKAGE, "version": version, "profile": profile.name, "what": profile.what, "reason": reason,
             "cmake_args": list(profile.cmake_args), "needs": list(profile.needs),
             "libraries": {p.name: file_sha256(p) for p in libraries(lib)} if lib else {}}
    Path(sys.prefix, STAMP).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    problems = check_installed(raise_error=False)
    if problems:
        raise TunaError("the llama.cpp build just installed cannot run on this CPU: " + "; ".join(problems))
    return stamp


# ----------------------------------------------------------------------------------------------- checking

AMX = {"ldtilecfg", "sttilecfg", "tileloadd", "tileloaddt1", "tilestored", "tilerelease", "tilezero"}
_FMA = re.compile(r"^vf(n?)m(add|sub|addsub|subadd)(132|213|231)")
_BMI2 = {"bzhi", "mulx", "pdep", "pext", "rorx", "sarx", "shlx", "shrx"}
_BMI1 = {"andn", "bextr", "blsi", "blsmsk", "blsr"}
_F16C = {"vcvtph2ps", "vcvtps2ph"}
_AVX2_ONLY = re.compile(r"^(vperm2i128|vinserti128|vextracti128|vpbroadcast[bwdq]|vbroadcasti128|vpermd|vpermq|vpermps|"
                        r"vpermpd|vpsllv[dq]|vpsrlv[dq]|vpsrav[dq]|vpmaskmov[dq]|v(p)?gather[dq][dqp][sd]?|vpblendd)$")
_VNNI = {"vpdpbusd", "vpdpbusds", "vpdpwssd", "vpdpwssds"}
_BF16 = {"vdpbf16ps", "vcvtne2ps2bf16", "vcvtneps2bf16"}
_VBMI = {"vpermb", "vpermi2b", "vpermt2b", "vpmultishiftqb"}
_PREFIXES = {"67", "2e", "3e", "26", "64", "65", "36"}
V4 = ("avx512f", "avx512bw", "avx512dq", "avx512vl")
"""The x86-64-v4 level every AVX512 CPU since 2017 has; EVEX code is checked against it plus the named extensions."""


def instruction_needs(raw: list[str], mnemonic: str, operands: str) -> set[str]:
    """The CPU flags one disassembled instruction needs beyond x86-64-v2 (``amx_tile`` for AMX)."""
    m = mnemonic.split(".")[0]
    if m in AMX or m.startswith("tdp"):
        return {"amx_tile"}
    first = next((b for b in raw if b not in _PREFIXES), "")
    need: set[str] = set()
    if first == "62":  # EVEX (BOUND is invalid in 64-bit mode): AVX512
        need.update(V4)
        if m in _VNNI:
            need.add("avx512_vnni")
        elif m in _BF16:
            need.add("avx512_bf16")
        elif m in _VBMI:
            need.add("avx512vbmi")
        elif re.search(r"ph$|sh$", m) and m not in _F16C:
            need.add("avx512_fp16")
        return need
    if first in ("c4", "c5"):  # VEX (LES/LDS are invalid in 64-bit mode)
        if m in _BMI2:
            return {"bmi2"}
        if m in _BMI1:
            return {"bmi1"}
        need.add("avx")
        if _FMA.match(m):
            need.add("fma")
        elif m in _F16C:
            need.add("f16c")
        elif m in _VNNI:
            need.add("avx_vnni")
        elif _AVX2_ONLY.match(m) or (m.startswith("vp") and "%ymm" in operands):
            need.add("avx2")
    return need


_LINE = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(\S+)\s*(.*)$")
_FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def scan_library(path: Path) -> dict[str, dict[str, object]]:
    """flag -> {"count", "example": (function, instruction)} over a library's disassembly (``objdump -d``)."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise FileNotFoundError("objdump")
    proc = subprocess.Popen([objdump, "-d", "-w", str(path)], stdout=subprocess.PIPE,
                            text=True, errors="replace")
    found: dict[str, dict[str, object]] = {}
    func = "?"
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.endswith(">:\n"):
            f = _FUNC.match(line.strip())
            if f:
                func = f.group(1)
            continue
        m = _LINE.match(line)
        if not m:
            continue
        for flag in instruction_needs(m.group(1).split(), m.group(2), m.group(3)):
            entry = found.setdefault(flag, {"count": 0, "example": (func, f"{m.group(2)} {m.group(3)}".strip())})
            entry["count"] = int(entry["count"]) + 1  # type: ignore[call-overload]
    if proc.wait() != 0:
        raise TunaError(f"objdump could not read {path}")
    return found


@lru_cache(maxsize=8)
def _scan_cached(path: str, sha: str) -> dict[str, dict[str, object]]:
    from tuna.models import cache_root

    f = cache_root() / "llamacpp_scan" / f"{sha[:32]}.json"
    if f.exists():
        return json.loads(f.read_text())
    found = scan_library(Path(path))
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(found))
    return found


def problems_for(found: dict[str, dict[str, object]], flags: frozenset[str], name: str) -> list[str]:
    """Why a library's instructions cannot run on a CPU with ``flags`` (empty: they can)."""
    out = []
    for flag in sorted(found):
        example = found[flag]["example"]
        where = f"{found[flag]['count']} instruction(s), e.g. `{example[1]}` in {example[0]}"  # type: ignore[index]
        if flag == "amx_tile":
            out.append(f"{name} holds AMX instructions ({where}): ggml's AMX kernels fault on AMX CPUs in VMs")
        elif flag not in flags:
            out.append(f"{name} needs {flag.upper()}, which this CPU lacks ({where})")
    return out


def check_installed(*, raise_error: bool = True, flags: frozenset[str] | None = None) -> list[str]:
    """Problems of the installed llama.cpp libraries on this CPU (x86-64 only; empty: runnable). Raises a TunaError
    with the fix unless ``raise_error`` is false."""
    if machine() not in ("x86_64", "amd64"):
        return []
    lib = library_dir()
    if lib is None:
        return []
    flags = cpu_flags() if flags is None else flags
    problems: list[str] = []
    for p in libraries(lib):
        try:
            found = _scan_cached(str(p), file_sha256(p))
        except FileNotFoundError:
            stamp = read_stamp()
            missing = [f for f in (stamp or {}).get("needs", []) if f not in flags]
            if stamp is None:
                problems.append("objdump is missing and no set-up record says how llama.cpp was built")
            elif missing:
                problems.append(f"built for {stamp['profile']}, which needs {', '.join(missing)} (missing here)")
            break
        problems += problems_for(found, flags, p.name)
    if problems and raise_error:
        raise TunaError("the installed llama.cpp cannot run on this CPU: " + "; ".join(problems) + ". Rebuild it for "
                        "this CPU: `make setup` (or `python -m tuna.feedback.llamacpp_build install` in the venv)")
    return problems


def read_stamp() -> dict | None:
    p = Path(sys.prefix, STAMP)
    return json.loads(p.read_text()) if p.exists() else None


_CHECKED: set[str] = set()


def ensure_runnable() -> None:
    """Called before a llama.cpp server starts: checks the installed build on this CPU once per process and logs
    which build it is, with its reason (as the precision choice is logged); a build that cannot run is a TunaError."""
    if "done" in _CHECKED:
        return
    check_installed()
    stamp = read_stamp()
    what = f"{stamp['profile']} ({stamp['what']}; {stamp['reason']})" if stamp else "not built by tuna's set-up"
    log.info("llama.cpp build: %s; its libraries hold no instruction this CPU lacks", what)
    _CHECKED.add("done")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tuna.feedback.llamacpp_build", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("profile", help="print the build this CPU gets, and why")
    inst = sub.add_parser("install", help="build (once) and install llama-cpp-python for this CPU")
    inst.add_argument("--cache", type=Path, default=None, help="wheel cache (default $TUNA_WHEELS or ~/.cache/tuna/wheels)")
    sub.add_parser("check", help="check the installed libraries against this CPU")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "profile":
            p, why = choose_profile()
            print(f"{p.name} {pinned_requirement()} {' '.join(p.cmake_args)} # {why}")
        elif a.cmd == "install":
            install(a.cache)
        else:
            problems = check_installed(raise_error=False)
            print("\n".join(problems) if problems else "ok: no instruction this CPU lacks, no AMX")
            return 1 if problems else 0
    except TunaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
