"""`bidsafe step STAGE --option VALUE ... --log FILE`: one per-session stage, as a workflow job runs it.

The per-session rules (six jobs per session) are `shell:` rules calling this command, not `script:` rules:
Snakemake's script handling costs per job, when planning (it caches each job's script source and checks it
for code changes) and when running (the preamble imports Snakemake and unpickles the job). At 5,000 sessions
that was about a tenth of the dry run. The command also needs nothing from the submitting process: a cluster
node runs the same interpreter's bidsafe with the options on its command line.

The options are the stage function's keyword parameters, spelled as on the command line (`values_json` is
`--values-json`) and typed by its annotations: a path, a string, an integer, a boolean (`true` or `false`), a
list of paths or strings (any number of values, none included), and JSON text for a mapping or a list of
mappings. A parameter without a default is a required option.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bidsafe.errors import BidsafeError

# stage name -> the function a job calls, and the function whose keyword parameters are its options
# (deid's job function takes its options through to `deid_session`)
STEPS: dict[str, tuple[str, str, str | None]] = {
    "harvest": ("bidsafe.deid.stage", "harvest_stage", None),
    "deid": ("bidsafe.deid.stage", "deid_stage", "deid_session"),
    "convert": ("bidsafe.stages", "convert_stage", None),
    "scrub": ("bidsafe.stages", "scrub_stage", None),
    "deface": ("bidsafe.stages", "deface_stage", None),
    "qc": ("bidsafe.stages", "qc_stage", None),
}


def put_interpreter_first_on_path() -> None:
    """Put the folder of the running interpreter first on PATH, for the jobs this process starts: their
    `bidsafe step` is then the bidsafe of the venv running the workflow, even when the venv is not activated
    (`.venv/bin/snakemake ...`), as `bidsafe run` arranges it. A job whose conda env is activated puts the env's
    folder before it."""
    from bidsafe.runner import tool_environment

    os.environ["PATH"] = tool_environment()["PATH"]


def step_function(stage: str) -> Callable[..., Any]:
    module, name, _ = STEPS[stage]
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


def option_parameters(stage: str) -> list[tuple[inspect.Parameter, Any, str]]:
    """The keyword parameters a stage's job takes: each with its resolved annotation and its function's name."""
    module_name, name, options_from = STEPS[stage]
    module = importlib.import_module(module_name)
    found: list[tuple[inspect.Parameter, Any, str]] = []
    for function_name in (name, options_from):
        if function_name is None:
            continue
        function = getattr(module, function_name)
        hints = typing.get_type_hints(function)
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                found.append((parameter, hints[parameter.name], f"{module_name}.{function_name}"))
    return found


def _boolean(text: str) -> bool:
    if text.strip().lower() in ("true", "yes", "1"):
        return True
    if text.strip().lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _without_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        left = [a for a in typing.get_args(annotation) if a is not type(None)]
        return left[0] if len(left) == 1 else annotation
    return annotation


def _is_mapping(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, Mapping)


def _argument(annotation: Any) -> dict[str, Any]:
    """How argparse reads one option of this annotation."""
    annotation = _without_none(annotation)
    origin = typing.get_origin(annotation)
    if _is_mapping(annotation):
        return {"type": _json, "metavar": "JSON"}
    if origin in (list, Sequence, tuple):
        (item,) = typing.get_args(annotation)[:1] or (str,)
        if _is_mapping(item):
            return {"type": _json, "metavar": "JSON"}
        is_path = _without_none(item) is Path
        return {"type": Path if is_path else str, "nargs": "*", "metavar": "PATH" if is_path else "VALUE"}
    if annotation is bool:
        return {"type": _boolean, "metavar": "true|false"}
    if annotation in (int, str):
        return {"type": annotation, "metavar": annotation.__name__.upper()}
    if annotation is Path or (isinstance(annotation, types.UnionType) and Path in typing.get_args(annotation)):
        return {"type": Path, "metavar": "PATH"}
    raise TypeError(f"bidsafe step: no command-line form for a parameter of type {annotation!r}")


def step_parser(stage: str) -> argparse.ArgumentParser:
    function = step_function(stage)
    parser = argparse.ArgumentParser(prog=f"bidsafe step {stage}",
                                     description=(inspect.getdoc(function) or "").split("\n\n")[0])
    parser.add_argument("--log", required=True, type=Path, metavar="FILE",
                        help="the job's log: everything the stage logs or prints goes there")
    for parameter, annotation, where in option_parameters(stage):
        required = parameter.default is inspect.Parameter.empty
        parser.add_argument(f"--{parameter.name.replace('_', '-')}", dest=parameter.name, required=required,
                            default=argparse.SUPPRESS, help=f"`{parameter.name}` of {where}", **_argument(annotation))
    return parser


def run_step(stage: str, arguments: Sequence[str]) -> Any:
    """Parse a stage's options and run it with its log (argparse exits 2 on a bad option, naming it); returns
    what the stage returns."""
    from bidsafe.runlog import log_to

    options = vars(step_parser(stage).parse_args(list(arguments)))
    log = options.pop("log")
    # Every line goes to the job's log only (as a `script:` job's did): the terminal, which is Snakemake's
    # output and the cluster's job log, gets the one-line outcome of a failure (cli_main).
    console = logging.getLogger("bidsafe")
    handlers = list(console.handlers)
    for handler in handlers:
        console.removeHandler(handler)
    try:
        with log_to(log):
            return step_function(stage)(**options)
    finally:
        for handler in handlers:
            console.addHandler(handler)


def cli_main(args: argparse.Namespace) -> int:
    options = list(args.options)
    if options[:1] == ["--"]:
        options = options[1:]
    try:
        run_step(args.stage, options)
    except BidsafeError:
        raise
    except Exception as exc:
        # the log holds the one-line reason (bidsafe.runlog); no traceback: its frames may hold values
        raise BidsafeError(f"{args.stage} failed ({type(exc).__name__}); the job's log says why") from None
    return 0


__all__ = ["STEPS", "cli_main", "option_parameters", "put_interpreter_first_on_path", "run_step", "step_parser"]
