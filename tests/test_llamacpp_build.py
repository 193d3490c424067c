"""The llama.cpp build of the embedded judge: chosen per CPU kind, never with AMX, and checked against the running CPU.

The check reads the libraries' own instructions (objdump), so it means something on any CPU: on an AMX Xeon it
catches ggml's AMX kernels (which fault there in a VM), on an AVX2-only CPU a wheel built natively on an AVX512
machine and reused from a cache."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tuna.feedback import llamacpp_build as lb

AVX2_AMD = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 popcnt".split())
AMX_XEON = AVX2_AMD | frozenset("avx512f avx512bw avx512dq avx512vl avx512_vnni avx512_bf16 avx512vbmi amx_tile amx_bf16 amx_int8".split())
OLD_X86 = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt".split())


def test_profile_per_cpu_kind(monkeypatch):
    monkeypatch.delenv(lb.CMAKE_ENV, raising=False)
    cases = [(AVX2_AMD, "x86_64", "x86-64-v3"), (AMX_XEON, "x86_64", "x86-64-v3"), (OLD_X86, "x86_64", "x86-64-v2"),
             (frozenset({"fp", "asimd", "bf16"}), "aarch64", "native")]
    for flags, arch, want in cases:
        p, why = lb.choose_profile(flags, arch)
        assert p.name == want, (flags, arch)
        assert all("AMX" not in a for a in p.cmake_args if a.endswith("=ON")), p.cmake_args
        if arch == "x86_64":
            assert "-DGGML_NATIVE=OFF" in p.cmake_args and all(f in flags for f in p.needs)
    assert "AMX is never used" in lb.choose_profile(AMX_XEON, "x86_64")[1]
    with pytest.raises(lb.TunaError, match="SSE4.2"):
        lb.choose_profile(frozenset({"sse2"}), "x86_64")
    monkeypatch.setenv(lb.CMAKE_ENV, "-DGGML_CUDA=ON")
    assert lb.choose_profile(AVX2_AMD, "x86_64")[0].cmake_args == ("-DGGML_CUDA=ON",)
    assert len(cases) == 4


def test_version_pinned_in_one_place():
    v = lb.pinned_requirement()
    assert v.count(".") == 2
    import importlib.metadata as md

    assert md.version("llama-cpp-python") == v  # the set-up installed the pinned version


@pytest.mark.parametrize(("raw", "mnemonic", "operands", "needs"), [
    ("c5 fc 58 c1", "vaddps", "%ymm1,%ymm0,%ymm0", {"avx"}),
    ("c5 fd fe c1", "vpaddd", "%ymm1,%ymm0,%ymm0", {"avx", "avx2"}),
    ("c4 e2 7d 58 c0", "vpbroadcastd", "%xmm0,%ymm0", {"avx", "avx2"}),
    ("c4 e2 f1 a9 c2", "vfmadd213sd", "%xmm2,%xmm1,%xmm0", {"avx", "fma"}),
    ("c4 e2 79 13 c0", "vcvtph2ps", "%xmm0,%xmm0", {"avx", "f16c"}),
    ("c4 e2 7b f7 c1", "shrx", "%eax,%ecx,%eax", {"bmi2"}),
    ("62 f1 7c 48 58 c1", "vaddps", "%zmm1,%zmm0,%zmm0", set(lb.V4)),
    ("62 f2 7d 48 50 c1", "vpdpbusd", "%zmm1,%zmm0,%zmm0", set(lb.V4) | {"avx512_vnni"}),
    ("62 f2 7e 48 52 c1", "vdpbf16ps", "%zmm1,%zmm0,%zmm0", set(lb.V4) | {"avx512_bf16"}),
    ("c4 e2 78 49 84 24 c0 00 00 00", "ldtilecfg", "0xc0(%rsp)", {"amx_tile"}),
    ("c4 e2 7b 49 e0", "tilezero", "%tmm4", {"amx_tile"}),
    ("c4 e2 7b 5e c1", "tdpbssd", "%tmm0,%tmm1,%tmm2", {"amx_tile"}),
    ("0f 58 c1", "addps", "%xmm1,%xmm0", set()),
    ("48 89 c3", "mov", "%rax,%rbx", set()),
])
def test_instruction_needs(raw, mnemonic, operands, needs):
    assert lb.instruction_needs(raw.split(), mnemonic, operands) == needs


def _compile(tmp_path: Path, name: str, body: str, flags: list[str]) -> Path:
    src = tmp_path / f"{name}.c"
    src.write_text("#include <immintrin.h>\n" + body)
    out = tmp_path / f"lib{name}.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", *flags, "-o", str(out), str(src)], check=True)
    return out


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("objdump") is None, reason="needs gcc and objdump")
def test_scan_finds_what_a_cpu_lacks(tmp_path):
    """Real libraries compiled here: an AVX2 one runs on both CPU kinds; AVX512 code is refused on the AVX2 CPU; AMX
    code is refused everywhere (even on the CPU that has AMX: ggml's AMX kernels fault there in VMs)."""
    avx2 = _compile(tmp_path, "avx2", "__m256i f(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }", ["-mavx2"])
    avx512 = _compile(tmp_path, "avx512", "__m512 f(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }", ["-mavx512f"])
    amx = _compile(tmp_path, "amx", "void f(void) { _tile_zero(0); _tile_release(); }", ["-mamx-tile"])
    checked = 0
    for lib, on_amd, on_xeon in ((avx2, 0, 0), (avx512, 1, 0), (amx, 1, 1)):
        found = lb.scan_library(lib)
        assert bool(lb.problems_for(found, AVX2_AMD, lib.name)) == bool(on_amd), (lib.name, found)
        assert bool(lb.problems_for(found, AMX_XEON, lib.name)) == bool(on_xeon), (lib.name, found)
        checked += 1
    assert checked == 3
    assert "AMX" in lb.problems_for(lb.scan_library(amx), AMX_XEON, "libamx.so")[0]


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_installed_build_runs_on_this_cpu():
    """The llama.cpp the set-up installed holds no AMX and no instruction this CPU lacks (on any CPU kind)."""
    lib = lb.library_dir()
    assert lib is not None, "llama-cpp-python is not installed (make setup installs it)"
    scanned = lb.libraries(lib)
    assert any(p.name.startswith("libggml-cpu") for p in scanned)
    assert lb.check_installed(raise_error=False) == []
    stamp = lb.read_stamp()  # the set-up records its choice and the libraries it installed
    assert stamp is not None and stamp["profile"] == lb.choose_profile()[0].name
    assert stamp["libraries"] == {p.name: lb.file_sha256(p) for p in scanned}
