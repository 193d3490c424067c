"""The GPU check (issue #12): one command, about 6 minutes on one H100/H200, results in results/benchmarks/gpu_*.json.

    bash benchmarks/gpu_check.sh            # on the GPU machine (the wrapper installs what is missing, then runs this)

Steps (each bounded by the time left of an 8-minute budget; a failed step is recorded and the next one runs):

1. ``env``: GPU, driver, torch/transformers versions, the dense bf16 peak used for MFU -> ``gpu_env.json``;
2. ``tests``: the CUDA tests of ``tests/test_attention.py`` (flex loss and gradients equal the padded path's for
   Llama, Gemma 3 and Gemma 2; no recompile between bf16 steps) -> ``gpu_tests.json``;
3. ``train``: ``tuna train prob-rank`` on 16 real Vicuna records x 4 answers, bf16-mixed, FSDP on one device,
   ``model.logprob_mode auto`` (prefix_shared + FlexAttention); the exported folder is reloaded by plain
   transformers and scored with auto and chunked log-probs -> ``gpu_train.json``;
4. ``bench``: ``benchmarks/ranking_step.py --device cuda`` (135M and a random Llama-3.2-1B; tokens/s, peak memory,
   MFU) -> ``gpu_ranking_step.json``;
5. ``vllm``: ``tuna sample --backend vllm`` where vLLM is installed, else recorded as skipped -> ``gpu_vllm.json``.
A summary of all steps goes to ``gpu_check.json``.

On a machine without internet (a lent sandbox GPU), prepare the assets here first:

    python benchmarks/gpu_check.py --pack .gpu    # wheels a bare CUDA image lacks, SmolLM2's tokenizer and config,
                                                  # the Vicuna files the check reads (~10 MB; .gpu/ is git-ignored)

and carry ``.gpu`` to the GPU machine. There, the wrapper installs the wheels; data come from ``$TUNA_SHARED_DATA``
(default ``../shared/data``, else ``.gpu/data``); the model is the embedded SmolLM2-135M-Instruct where its weight
package is installed, else its architecture with random weights (``gpu_env.json`` says which): the speed and
equality checks do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
BUDGET_S = 480
REQUIRED = {  # import name -> distribution, for what the check runs (tuna's CLI, training, tests, benchmark)
    "torch": "torch", "transformers": "transformers", "lightning": "lightning", "peft": "peft",
    "accelerate": "accelerate", "safetensors": "safetensors", "tokenizers": "tokenizers", "yaml": "pyyaml",
    "filelock": "filelock", "tqdm": "tqdm", "tensorboard": "tensorboard", "pytest": "pytest",
    "jsonargparse": "jsonargparse", "docstring_parser": "docstring-parser", "typeshed_client": "typeshed-client",
    "pydantic": "pydantic", "pydantic_core": "pydantic-core", "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection", "datasets": "datasets", "dill": "dill", "multiprocess": "multiprocess",
    "xxhash": "xxhash", "pyarrow": "pyarrow", "pandas": "pandas", "fsspec": "fsspec",
}
PACK = ["jsonargparse", "docstring-parser", "typeshed-client", "pydantic", "pydantic-core", "annotated-types",
        "typing-inspection", "datasets", "dill", "multiprocess"]
"""What this workplace's CUDA image lacks of REQUIRED (its package list, 2026-11); pinned to this environment's versions."""
SMOL_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
VICUNA_FILES = ["vicuna_qa/old_eval_answers.jsonl.gz", "vicuna_qa/question.jsonl"]


def missing() -> list[str]:
    return [dist for mod, dist in REQUIRED.items() if importlib.util.find_spec(mod) is None]


def pack(dest: Path) -> None:
    """Run where the project's environment is complete: wheels for cp312 manylinux x86_64 (no dependencies: PACK
    is the full list), SmolLM2's tokenizer and config (no weights), the Vicuna files."""
    from importlib.metadata import version

    sys.path.insert(0, str(REPO))
    from tuna.models import resolve

    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    plats = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    pins = [f"{d}=={version(d)}" for d in PACK]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", *plats, "-d", str(wheels), *pins], check=True)
    smol = Path(resolve("smollm2-135m-instruct"))
    (dest / "smollm2").mkdir(exist_ok=True)
    for f in SMOL_FILES:
        if (smol / f).exists():
            shutil.copy2(smol / f, dest / "smollm2" / f)
    data = Path(os.environ.get("TUNA_SHARED_DATA", REPO.parent / "shared" / "data"))
    for f in VICUNA_FILES:
        (dest / "data" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data / f, dest / "data" / f)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"packed {dest} ({size / 2**20:.1f} MiB): carry it to the GPU machine and run bash benchmarks/gpu_check.sh")


# ------------------------------------------------------------------------------------------------ the run


class Check:
    def __init__(self, out: Path, assets: Path | None, budget_s: float, device: str = "cuda"):
        self.out, self.assets, self.deadline, self.device = out, assets, time.monotonic() + budget_s, device
        self.steps: dict[str, dict] = {}
        self.env = dict(os.environ, TUNA_PROGRESS="0", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self.work = Path(os.environ.get("TUNA_GPU_WORK", "/tmp/tuna-gpu-check"))
        self.work.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self, name: str, data: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / name).write_text(json.dumps(data, indent=2))

    def run(self, name: str, fn) -> None:
        t0 = time.monotonic()
        if self.left() < 20:
            self.steps[name] = {"status": "skipped", "reason": "out of the time budget"}
        else:
            try:
                self.steps[name] = {"status": "passed", **(fn() or {})}
            except Exception as e:  # a failed step is recorded; the next one runs
                self.steps[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[-4000:]}
        self.steps[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(f"gpu_check: {name}: {self.steps[name]['status']} ({self.steps[name]['seconds']} s)", flush=True)

    def sub(self, cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=max(10.0, min(timeout, self.left())), **kw)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
        return proc

    # ---------------------------------------------------------------------------------------- steps

    def prepare(self) -> dict:
        """Data and model the other steps read; the environment record."""
        import torch

        sys.path.insert(0, str(REPO))
        data = Path(os.environ.get("TUNA_SHARED_DATA", REPO.parent / "shared" / "data"))
        if not all((data / f).exists() for f in VICUNA_FILES) and self.assets and (self.assets / "data").exists():
            data = self.assets / "data"
        if not all((data / f).exists() for f in VICUNA_FILES):
            raise FileNotFoundError(f"the Vicuna files {VICUNA_FILES} are not under {data} (set TUNA_SHARED_DATA or pack .gpu)")
        self.env["TUNA_SHARED_DATA"] = os.environ["TUNA_SHARED_DATA"] = str(data)
        weights = "embedded SmolLM2-135M-Instruct"
        from tuna.errors import TunaError
        from tuna.models import resolve

        try:
            resolve("smollm2-135m-instruct")
        except TunaError:
            if not (self.assets and (self.assets / "smollm2" / "config.json").exists()):
                raise
            weights = self._random_smollm2()
        from mfu import peak_tflops

        from tuna.precision import describe

        info = {**describe(self.device), "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                "weights": weights, "data": str(data)}
        name = info.get("gpu", info["cpu"])
        if self.device == "cuda":
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True)
            info |= {"nvidia_smi": smi.stdout.strip(), "cuda": torch.version.cuda,
                     "capability": list(torch.cuda.get_device_capability()), "peak_bf16_tflops": peak_tflops(name)}
        self.write("gpu_env.json", info)
        return {"weights": weights, "gpu": name}

    def _random_smollm2(self) -> str:
        """No weight package here: SmolLM2-135M's config and tokenizer with random weights, in a private cache under
        the embedded name (so tests, CLI and benchmark resolve it)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cache = self.work / "cache"
        folder = cache / "models" / "smollm2-135m-instruct"
        if not (folder / "model.safetensors").exists():
            folder.mkdir(parents=True, exist_ok=True)
            for f in SMOL_FILES:
                if (self.assets / "smollm2" / f).exists():
                    shutil.copy2(self.assets / "smollm2" / f, folder / f)
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
        self.env["TUNA_CACHE"] = os.environ["TUNA_CACHE"] = str(cache)
        return "SmolLM2-135M architecture, random weights (no weight package on this machine)"

    def tests(self) -> dict:
        junit = self.work / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_attention.py", "-k", "cuda",
               f"--junitxml={junit}"]
        proc = subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=max(10.0, min(300, self.left())))
        import xml.etree.ElementTree as ET

        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        res = {**counts, "returncode": proc.returncode, "tail": (proc.stdout + proc.stderr)[-4000:]}
        self.write("gpu_tests.json", res)
        if proc.returncode != 0 or counts["skipped"] or counts["tests"] < 4:
            raise RuntimeError(f"CUDA tests: {counts}, exit {proc.returncode}")
        return counts

    def train(self) -> dict:
        sys.path.insert(0, str(REPO))
        import torch

        from tuna.data import DataConfig, collate_padded, tokenize_record
        from tuna.forward import response_token_logprobs
        from tuna.importers import import_vicuna_answers
        from tuna.models import load_model, load_tokenizer
        from tuna.records import Ranking, write_records

        data = Path(self.env["TUNA_SHARED_DATA"])
        recs = import_vicuna_answers(data / VICUNA_FILES[0], data / VICUNA_FILES[1])[:16]
        for r in recs:  # file order as the ranking: a stand-in that exercises the step, not a real ranking
            r.candidates = r.candidates[:4]
            for k, c in enumerate(r.candidates):
                c.score = -float(k)
            r.ranking = Ranking(by="import", method="file order")
        ranked = self.work / "vicuna_ranked.jsonl"
        write_records(ranked, recs)
        out = self.work / "train"
        shutil.rmtree(out, ignore_errors=True)
        gpu = self.device == "cuda"
        trainer = (["--trainer.accelerator", "gpu", "--trainer.strategy", "fsdp", "--trainer.precision", "bf16-mixed"] if gpu
                   else ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"])  # CPU: the plumbing only
        cmd = [sys.executable, "-m", "tuna_recipes", "train", "prob-rank", "--model.name_or_path", "smollm2-135m-instruct",
               "--data.train_file", str(ranked), "--data.batch_size", "4", "--data.max_length", "512" if gpu else "96",
               "--trainer.devices", "1", *trainer, "--trainer.max_steps", "4", "--out_dir", str(out)]
        t0 = time.monotonic()
        self.sub(cmd, timeout=240)
        wall = time.monotonic() - t0
        summary = json.loads((out / "train_summary.json").read_text())
        # the export reloads in plain transformers and scores: auto (prefix_shared + flex) equals chunked
        tok = load_tokenizer("smollm2-135m-instruct")
        model = load_model(out / "hf").to(self.device).eval()
        cfg = DataConfig(max_length=512 if gpu else 96)
        items = [tokenize_record(r.model_dump(), tok, cfg, mode="rank", with_gold=False) for r in recs[:4]]
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in collate_padded(items, tok.pad_token_id).items()}
        with torch.no_grad(), torch.autocast(self.device, dtype=torch.bfloat16, enabled=gpu):
            auto, mask = response_token_logprobs(model, batch, mode="auto")
            plain, _ = response_token_logprobs(model, batch, mode="chunked")
        token_diff = float((auto - plain)[mask].abs().max())
        n = mask.sum(-1).clamp_min(1)
        score_diff = float((((auto - plain) * mask).sum(-1) / n).abs().max())  # length-normalised scores, as ranked
        res = {"summary": summary, "wall_s": round(wall, 1), "reloaded_bf16_auto_vs_chunked": {
            "max_abs_token_logprob_diff": token_diff, "max_abs_score_diff": score_diff}}
        self.write("gpu_train.json", res)
        if summary["global_step"] != 4 or not score_diff < 0.05:
            raise RuntimeError(f"train: global_step {summary['global_step']}, auto vs chunked score |diff| {score_diff}")
        return {"global_step": summary["global_step"], "auto_vs_chunked_score_diff": score_diff}

    def bench(self) -> dict:
        self.sub([sys.executable, "benchmarks/ranking_step.py", "--device", "cuda", "--out", str(self.out / "gpu_ranking_step.json")],
                 timeout=330)
        runs = json.loads((self.out / "gpu_ranking_step.json").read_text())["runs"]
        return {r["config"]["model"]: r.get("ratios_vs_released") for r in runs}

    def vllm(self) -> dict:
        if importlib.util.find_spec("vllm") is None:
            self.write("gpu_vllm.json", {"status": "skipped", "reason": "vLLM is not installed here"})
            return {"status": "skipped", "reason": "vLLM is not installed here"}
        sys.path.insert(0, str(REPO))
        from tuna.importers import import_vicuna_answers
        from tuna.records import write_records

        data = Path(self.env["TUNA_SHARED_DATA"])
        recs = import_vicuna_answers(data / VICUNA_FILES[0], data / VICUNA_FILES[1])[:32]
        for r in recs:
            r.candidates = []
        src, dst = self.work / "vicuna_questions.jsonl", self.work / "vllm_samples.jsonl"
        write_records(src, recs)
        dst.unlink(missing_ok=True)
        t0 = time.monotonic()
        self.sub([sys.executable, "-m", "tuna_recipes", "sample", "--input", str(src), "--out", str(dst), "--model",
                  "smollm2-135m-instruct", "--backend", "vllm", "--n", "4", "--max_new_tokens", "128", "--dedup", "false"],
                 timeout=240)
        wall = time.monotonic() - t0
        n = sum(len(json.loads(line).get("candidates", [])) for line in dst.read_text().splitlines() if line.strip())
        res = {"records": len(recs), "samples": n, "wall_s_incl_engine_start": round(wall, 1)}
        self.write("gpu_vllm.json", res)
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, default=None, help="write the assets for a machine without internet, then exit")
    ap.add_argument("--missing", action="store_true", help="print the distributions this python lacks, then exit")
    ap.add_argument("--assets", type=Path, default=REPO / ".gpu")
    ap.add_argument("--steps", default="tests,train,bench,vllm")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: a plumbing run of the train step on a machine without a GPU (--steps train)")
    args = ap.parse_args()
    if args.pack:
        pack(args.pack)
        return
    if args.missing:
        print(" ".join(missing()))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device")
    check = Check(args.out, args.assets if args.assets.exists() else None, args.budget_s, args.device)
    check.run("prepare", check.prepare)
    if check.steps["prepare"]["status"] == "passed":
        for step in args.steps.split(","):
            check.run(step, getattr(check, step))
    check.write("gpu_check.json", {"steps": check.steps, "budget_s": args.budget_s})
    print(json.dumps(check.steps, indent=2))
    sys.exit(0 if all(s["status"] != "failed" for s in check.steps.values()) else 1)


if __name__ == "__main__":
    main()
