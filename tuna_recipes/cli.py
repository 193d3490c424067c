"""The ``tuna`` command: YAML config + dotted overrides + ``--print_config`` (jsonargparse, as in litgpt).

    tuna train prob-rank --config experiments/embedded/prob_rank.yaml --optim.lr 2e-5
    tuna train sft --print_config > my_sft.yaml

The commands come from the modules that own them (each lists its own in ``COMMANDS``): a command is a function, or a
job dataclass run by the module's ``RUNNERS``. Errors caused by input (bad records, missing files, unknown keys) print
one line and exit with status 2; set ``TUNA_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import evaluation.commands
import evaluation.verifiable_commands
import tuna.feedback.commands
import tuna.importers
import tuna.train
import tuna_recipes.demo
import tuna_recipes.pipeline.commands
import tuna_recipes.reproduce
from tuna.errors import TunaError

_MODULES = (tuna.importers, tuna.feedback.commands, evaluation.commands, evaluation.verifiable_commands,
            tuna_recipes.pipeline.commands, tuna_recipes.demo, tuna_recipes.reproduce)


DESCRIPTION = ("Tuna, instruction tuning using feedback from LLMs (Li et al. 2023): make and rank candidate responses, "
               "train on the rankings, evaluate, report. `tuna <command> --help` explains each command.")

# A command's line in `tuna --help` is the first line of its docstring (jsonargparse); a group's is its "_help".
GROUP_HELP = {
    "train": "Train a student, one stage at a time: SFT, probabilistic ranking (Tuna_p), contextual ranking (Tuna).",
    "eval": "Evaluate a model: Super-NI, LMentry, Vicuna QA, a verifiable split, held-out pair accuracy.",
}


def commands() -> dict[str, Any]:
    """Every command by name (nested dicts are command groups: ``train``, ``eval``, each with its ``_help`` line)."""
    cmds: dict[str, Any] = dict(tuna.train.commands())
    for mod in _MODULES:
        for name, cmd in mod.COMMANDS.items():  # command groups (eval) may come from several modules
            if isinstance(cmd, dict) and isinstance(cmds.get(name), dict):
                cmds[name] = {**cmds[name], **cmd}
            else:
                cmds[name] = cmd
    for name, text in GROUP_HELP.items():
        cmds[name] = {"_help": text, **cmds[name]}
    return cmds


def runners() -> dict[type, Any]:
    """Job dataclass -> the function that runs it."""
    out: dict[type, Any] = {}
    for mod in _MODULES:
        out.update(getattr(mod, "RUNNERS", {}))
    return out


def _run_config(result: Any) -> Any:
    """Commands given as job dataclasses parse to an instance; run it here."""
    runner = runners().get(type(result))
    return runner(result) if runner else result


def _unwrap_optional(tp: Any) -> Any:
    import types
    import typing

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else None
    return tp


def _fields_of(obj: Any) -> dict[str, Any] | None:
    """``{name: type}`` of a command function's parameters or of a config dataclass; None for anything else."""
    import dataclasses
    import inspect
    import typing

    try:
        if dataclasses.is_dataclass(obj) and isinstance(obj, type):
            hints = typing.get_type_hints(obj)
            return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(obj)}
        if inspect.isfunction(obj):
            hints = typing.get_type_hints(obj)
            return {n: hints.get(n, Any) for n in inspect.signature(obj).parameters}
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave the check to jsonargparse
        return None
    return None


def _check_keys(node: Any, fields: dict[str, Any], prefix: str, path: str) -> None:
    import difflib

    import yaml

    if not isinstance(node, yaml.MappingNode):
        return
    for k, v in node.value:
        key = str(k.value)
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else " (a typo?)"
            raise TunaError("config key does not exist" + hint, path=path, line=k.start_mark.line + 1, field=dotted)
        sub = _unwrap_optional(fields[key])
        sub_fields = _fields_of(sub) if sub is not None else None
        if sub_fields is not None:
            _check_keys(v, sub_fields, dotted + ".", path)


def check_config_files(argv: list[str]) -> None:
    """Name an unknown key of a ``--config`` YAML file by file, line and dotted key (jsonargparse reports some of
    them, in nested subcommands, as a bare ``error: 'train'``)."""
    import yaml

    node: Any = commands()
    i = 0
    while isinstance(node, dict) and i < len(argv) and argv[i] in node:
        node = node[argv[i]]
        i += 1
    paths = []
    for j in range(i, len(argv)):
        if argv[j] == "--config" and j + 1 < len(argv):
            paths.append(argv[j + 1])
        elif argv[j].startswith("--config="):
            paths.append(argv[j].split("=", 1)[1])
    top = _fields_of(node)
    if top is None:
        return
    for p in paths:
        if not os.path.isfile(p):
            continue  # an inline YAML string or a missing file: jsonargparse reports it
        try:
            with open(p, encoding="utf-8") as f:
                doc = yaml.compose(f)
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            raise TunaError(f"not valid YAML: {getattr(e, 'problem', None) or e}", path=p,
                            line=mark.line + 1 if mark else None) from None

        _check_keys(doc, top, "", p)


def main(argv: list[str] | None = None) -> Any:
    import argparse

    from jsonargparse import CLI, set_parsing_settings

    # the configs document each field in a docstring under it: that is what `--help` shows
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    logging.basicConfig(level=os.environ.get("TUNA_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "absl", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if os.environ.get("TUNA_ONLINE", "0") != "1":
        # Before anything imports huggingface_hub (it reads this once): an unknown model name then fails at once
        # instead of after ~40 s of retries against an unreachable hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_config_files(args)
        return _run_config(CLI(commands(), args=args, as_positional=False, prog="tuna", description=DESCRIPTION,
                               exit_on_error=False))
    except argparse.ArgumentError as e:
        if os.environ.get("TUNA_DEBUG"):
            raise
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        cmd = " ".join(a for a in args[:2] if not a.startswith("-"))
        print(f"tuna: error: {msg} (see `tuna {cmd + ' ' if cmd else ''}--help`)", file=sys.stderr)
        sys.exit(2)
    except TunaError as e:
        if os.environ.get("TUNA_DEBUG"):
            raise
        print(f"tuna: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("tuna: interrupted; finished work is saved and a re-run resumes", file=sys.stderr)
        sys.exit(130)


def entry() -> None:
    """The ``tuna`` console script. Not ``main`` itself: setuptools' wrapper calls ``sys.exit(main())``, which would
    print a command's return value (a path, a manifest) and exit 1 on success."""
    main()


if __name__ == "__main__":
    entry()
