"""The `tuna` command: configs parse, overrides apply, errors are one line with a non-zero exit."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted(p for p in (REPO / "experiments").rglob("*.yaml")
                       if p.parent.name in ("paper", "embedded") and p.stem in ("sft", "prob_rank", "context_rank"))


def tuna(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNA_PROGRESS": "0"}
    env.pop("TUNA_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tuna_recipes", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_training_config_parses_and_overrides_apply(config):
    stage = {"sft": "sft", "prob_rank": "prob-rank", "context_rank": "context-rank"}[config.stem]
    proc = tuna("train", stage, "--config", str(config), "--optim.lr", "3e-4", "--print_config")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["optim"]["lr"] == 3e-4
    raw = yaml.safe_load(config.read_text())
    assert cfg["model"]["name_or_path"] == raw["model"]["name_or_path"]
    assert cfg["data"]["train_file"] == raw["data"]["train_file"]


def test_stage_defaults_follow_the_paper():
    lrs = {}
    for stage in ("sft", "prob-rank", "context-rank"):
        proc = tuna("train", stage, "--print_config")
        assert proc.returncode == 0, proc.stderr
        lrs[stage] = yaml.safe_load(proc.stdout)["optim"]["lr"]
    assert lrs == {"sft": 2e-5, "prob-rank": 1e-5, "context-rank": 1e-6}


def test_unknown_config_key_is_named():
    proc = tuna("train", "prob-rank", "--optim.learning_rate", "1e-5")
    assert proc.returncode != 0
    assert "learning_rate" in proc.stderr


def test_bad_input_gives_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "instruction": "x", "candidates": [{"text": "a", "score": NaN}], "ranking": {"by": "t"}}\n')
    proc = tuna("train", "prob-rank", "--model.name_or_path", "tiny-random-llama", "--data.train_file", str(bad),
                "--out_dir", str(tmp_path / "o"), "--trainer.accelerator", "cpu")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tuna: error: {bad}:1: field 'candidates[0].score'"), proc.stderr[-2000:]

    proc = tuna("train", "sft", "--model.name_or_path", str(tmp_path / "nope"), "--data.train_file", str(bad),
                "--out_dir", str(tmp_path / "o2"))
    assert proc.returncode == 2 and "model path does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_import_command(shared_data, tmp_path):
    out = tmp_path / "alpaca.jsonl"
    proc = tuna("import", "--fmt", "alpaca", "--path", str(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz"),
                "--out", str(out), "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 5


def test_console_script_exits_zero_and_prints_no_return_value(shared_data, tmp_path):
    """The installed `tuna` script: a successful command exits 0 with nothing on stderr (setuptools' wrapper calls
    sys.exit on what the entry point returns)."""
    import importlib.metadata as md

    (ep,) = [e for e in md.entry_points(group="console_scripts") if e.name == "tuna"]
    assert ep.value == "tuna_recipes.cli:entry"
    code = f"import sys; from {ep.module} import {ep.attr}; sys.exit({ep.attr}())"  # exactly what the wrapper does
    out = tmp_path / "a.jsonl"
    r = subprocess.run([sys.executable, "-c", code, "import", "--fmt", "alpaca", "--path",
                        str(shared_data / "alpaca/alpaca_data_reconstructed.jsonl.gz"), "--out", str(out), "--limit", "2"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "TUNA_PROGRESS": "0"})
    assert r.returncode == 0 and str(out) not in r.stderr, r.stderr[-2000:]
    assert "wrote 2 records" in r.stdout


# ------------------------------------------------------------------------------------------------------------ help

_REPR = re.compile(r"\b[A-Z]\w*\(\w+: '")  # a dataclass's generated __doc__: "PipelineConfig(name: 'str' = ..."


def _first_paragraph(obj: Any) -> list[str]:
    return (inspect.getdoc(obj) or "").split("\n\n")[0].strip().splitlines()


def _balanced(text: str) -> bool:
    return all(text.count(a) == text.count(b) for a, b in ("()", "[]", "{}")) and text.count("`") % 2 == 0


def _line_problem(text: str | None, source: Any) -> str | None:
    """Why one line of help (a command's line, an option group's title) does not explain itself, or None.

    A line made from ``source``'s docstring is its first line: cut when the first paragraph goes on and the line
    does not end a sentence. Any other line (a field's or parameter's doc, a group's ``_help``) is shown whole."""
    if not text or not text.strip():
        return "empty"
    if _REPR.search(text):
        return "a dataclass repr"
    if "\n" in text:
        return "more than one line"
    if not _balanced(text):
        return "unbalanced brackets or backticks (cut)"
    para = _first_paragraph(source) if source is not None else []
    if para and text.rstrip(".") == para[0].strip().rstrip(".") and len(para) > 1 and not para[0].rstrip().endswith("."):
        return "cut mid-sentence (the docstring's first line goes on)"
    return None


def _subcommands(parser: Any) -> dict[str, tuple[Any, str | None]]:
    """{name: (subparser, its line in the parent's help)}."""
    out = {}
    for action in parser._actions:
        if type(action).__name__ == "ActionSubCommands":
            lines = {a.dest: a.help for a in action._choices_actions}
            out.update({name: (sub, lines.get(name)) for name, sub in action.choices.items()})
    return out


def _cmd(path: list[str]) -> str:
    return " ".join(["tuna", *path])


def test_every_subcommand_help_explains_itself(monkeypatch):
    """Walk `tuna --help` and the help of every command group and command below it (the parser `tuna` builds):
    each command has one complete line (a sentence ending in a full stop); no help text holds a dataclass repr;
    every option group's title is one complete line."""
    from jsonargparse import capture_parser

    from tuna_recipes import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
    root = capture_parser(lambda: cli.main([]))
    problems: list[str] = []
    commands_checked = groups_checked = 0

    def walk(parser: Any, node: dict[str, Any], path: list[str]) -> None:
        nonlocal commands_checked, groups_checked
        text = parser.format_help()
        if _REPR.search(text):
            problems.append(f"{_cmd(path)} --help: a dataclass repr")
        subs = _subcommands(parser)
        assert set(subs) == {k for k in node if k != "_help"}, path  # the parser holds every command, no other
        for name, (sub, line) in subs.items():
            component = node[name]
            why = _line_problem(line, None if isinstance(component, dict) else component)
            if why is None and not line.rstrip().endswith("."):
                why = "not a sentence ending in a full stop"
            if why:
                problems.append(f"`{_cmd(path + [name])}` in `{_cmd(path)} --help`: {why}: {line!r}")
            commands_checked += 1
            if isinstance(component, dict):
                walk(sub, component, path + [name])
            else:
                for group in sub._action_groups:
                    cls = getattr(group, "group_class", None)
                    if cls is None:
                        continue
                    why = _line_problem(group.title, cls)
                    if why:
                        problems.append(f"`{_cmd(path + [name])} --help`, group {group.title!r}: {why}")
                    groups_checked += 1
                walk(sub, {}, path + [name])

    tree = cli.commands()
    walk(root, tree, [])
    assert not problems, "\n".join(problems)
    n_commands = sum(1 + sum(1 for k in v if k != "_help") if isinstance(v, dict) else 1 for v in tree.values())
    assert commands_checked == n_commands >= 23  # 15 top-level commands, 3 training stages, 5 benchmarks today
    assert groups_checked >= 50


def test_line_problem_catches_what_the_walk_looks_for():
    """The checks can fail: a dataclass without a docstring, a docstring whose first line stops mid-sentence."""
    import dataclasses

    @dataclasses.dataclass
    class NoDoc:
        name: str = "demo"

    class Cut:
        """Convert the paper's released files into tuna records (JSONL); docs/fidelity.md says
        what each released field becomes."""

    class Whole:
        """Convert the paper's released files into tuna records (JSONL).

        docs/fidelity.md says what each released field becomes."""

    assert _line_problem(NoDoc.__doc__, NoDoc) == "a dataclass repr"
    first = inspect.getdoc(Cut).splitlines()[0]
    assert _line_problem(first, Cut) == "cut mid-sentence (the docstring's first line goes on)"
    assert _line_problem(inspect.getdoc(Whole).splitlines()[0], Whole) is None
    assert _line_problem("", None) == "empty" and _line_problem("The demo (offline", None).endswith("(cut)")
    assert _line_problem("Two\nlines", None) == "more than one line"


def test_top_level_eval_and_train_help_read_as_a_table_of_contents():
    """What a user sees: every command, benchmark and stage listed with a line of its own."""
    expected = {
        (): ["train", "import", "sample", "score", "reference", "judge", "eval", "report", "verifiable-data", "rank",
             "evidence-export", "pipeline", "sweep", "demo", "reproduce"],
        ("eval",): ["superni", "lmentry", "vicuna", "verifiable", "pairs"],
        ("train",): ["sft", "prob-rank", "context-rank"],
    }
    listed = 0
    for path, names in expected.items():
        proc = tuna(*path, "--help")
        assert proc.returncode == 0, proc.stderr
        assert not _REPR.search(proc.stdout)
        if not path:
            assert "instruction tuning using feedback from LLMs" in proc.stdout
        block = proc.stdout.split("Available subcommands:", 1)[1]
        for name in names:
            m = re.search(rf"^    {re.escape(name)}( +)(\S.*)$", block, flags=re.MULTILINE)
            assert m, f"tuna {' '.join(path)} --help lists no line for {name}"
            listed += 1
    assert listed == 23
