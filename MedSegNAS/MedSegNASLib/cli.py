"""``medsegnas`` command line: every job entry point, plus job management.

Exit codes: 0 success, 1 failure (one-line ``error: ...`` on stderr; traceback only with
``--debug``), 2 usage error (argparse), 130 interrupted by Ctrl-C.

Commands are contributed by the sub-packages: each module listed in :data:`COMMAND_MODULES`
exposes ``register(subparsers)`` which adds its sub-parsers and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit code or ``None``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import MedSegNASError

#: Modules that add sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "MedSegNASLib.data.commands",  # phantom, dataset
    "MedSegNASLib.jobs.commands",  # jobs list|status|cancel
    "MedSegNASLib.models.commands",  # models list|import|download|catalog|info|trust|remove
    "MedSegNASLib.inference.commands",  # segment
    "MedSegNASLib.nas.commands",  # search, train
    "MedSegNASLib.nas.benchmark",  # benchmark nas
    "MedSegNASLib.nas.tune",  # tune
    "MedSegNASLib.evaluation.commands",  # evaluate
    "MedSegNASLib.interactive.commands",  # interactive
    "MedSegNASLib.demo",  # demo
    "MedSegNASLib.dependencies",  # doctor
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def command_parser(
    prog: str, description: str, version: str
) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A command line with ``--version``, ``--debug`` and required sub-commands; returns both parsers."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=version)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, subparsers


def add_commands(subparsers: argparse._SubParsersAction, module_names: Sequence[str]) -> None:
    """Let each module in ``module_names`` add its sub-commands (``register(subparsers)``)."""
    for module_name in module_names:
        importlib.import_module(module_name).register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser, subparsers = command_parser(
        "medsegnas",
        "MedSegNAS: architecture search, training and segmentation of 3D medical images.",
        f"medsegnas {__version__}",
    )
    add_commands(subparsers, COMMAND_MODULES)
    return parser


def run(func, args: argparse.Namespace, debug: bool) -> int:
    """Call a command function, mapping exceptions to exit codes and one-line messages."""
    try:
        result = func(args)
    except MedSegNASError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so, show the traceback only when asked
        if debug:
            traceback.print_exc()
        print(
            f"error: {type(exc).__name__}: {exc} (internal error; rerun with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK if result is None else int(result)


def is_own_process() -> bool:
    """Whether this process is ``medsegnas`` itself (``python -m MedSegNASLib.cli``, as the panels
    and jobs start it, or the console script), not a program that calls :func:`main` (tests, Slicer)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "MedSegNASLib.cli" or Path(sys.argv[0]).name == "medsegnas"


def end_process(code: int) -> NoReturn:
    """End this process now with ``code``, after flushing its logs and output streams.

    Skips the interpreter's teardown, which after a segmentation (torch, MONAI and the network
    loaded) took 1.5 s of a 7.5 s ``segment`` process on 2 free cores: time a user waits for
    nothing, since every result is already written (atomically) and every file closed.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing left to flush to
            stream.flush()
    os._exit(code)


def run_cli(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *, entry_point: bool = False
) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), set up logging and :func:`run` the chosen command.

    ``entry_point``: this call is the process's own command line (:func:`console_main`); then a
    command that sets ``exit_at_once`` (``segment``) ends the process as soon as it returns
    (:func:`end_process`). A command run by another (the demo's segment step) always returns."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s: %(message)s"
    )
    code = run(args.func, args, args.debug)
    if entry_point and getattr(args, "exit_at_once", False):
        end_process(code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``medsegnas ARGV`` for a program (tests, Slicer, other commands): returns the exit code."""
    return run_cli(build_parser(), argv)


def console_main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``medsegnas`` process: the console script and ``python -m MedSegNASLib.cli``."""
    sys.exit(run_cli(build_parser(), argv, entry_point=True))


if __name__ == "__main__":
    console_main()
