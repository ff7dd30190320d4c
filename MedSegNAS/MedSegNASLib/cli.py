"""``medsegnas`` command line: every job entry point, plus job management.

Exit codes: 0 success, 1 failure (one-line ``error: ...`` on stderr; traceback only with
``--debug``), 2 usage error (argparse), 130 interrupted by Ctrl-C.

Commands are contributed by the sub-packages: each module listed in :data:`COMMAND_MODULES`
exposes ``register(subparsers)`` which adds its sub-parsers and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit code or ``None``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

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


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), set up logging and :func:`run` the chosen command."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s: %(message)s"
    )
    return run(args.func, args, args.debug)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
