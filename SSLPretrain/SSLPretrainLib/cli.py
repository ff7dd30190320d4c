"""``sslpretrain`` command line: self-supervised pretraining jobs and environment information.

Exit codes: 0 success, 1 failure (one-line ``error: ...`` on stderr; traceback only with
``--debug``), 2 usage error (argparse), 130 interrupted by Ctrl-C; the same as ``medsegnas``,
whose error handling this command shares.

Commands: ``info`` (Python, PyTorch, MONAI and compute devices) is built in; the pretraining
commands come from the modules listed in :data:`COMMAND_MODULES`, each exposing
``register(subparsers)`` as in :mod:`MedSegNASLib.cli`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from MedSegNASLib.cli import add_commands, command_parser, run_cli
from MedSegNASLib.dependencies import doctor_report, install_command, packages_for
from MedSegNASLib.errors import MedSegNASError

from . import __version__

#: Modules that add sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "SSLPretrainLib.commands",  # pretrain
    "SSLPretrainLib.finetune",  # finetune
    "SSLPretrainLib.fewshot",  # fewshot
)

#: Packages (import names) a pretraining, fine-tuning or few-shot worker cannot run without
#: (:mod:`MedSegNASLib.dependencies`, feature ``ssl``).
REQUIRED_PACKAGES: tuple[str, ...] = tuple(packages_for("ssl"))


def _package_version(name: str) -> tuple[str | None, str | None]:
    """``(version, problem)`` of a package: ``(None, None)`` when it is not installed, and
    ``(None, "OSError: ...")`` when it is installed but fails to import (e.g. MONAI without
    torch, or a CUDA library that does not load): what a user running ``info`` needs to see."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        not_installed = isinstance(exc, ModuleNotFoundError) and exc.name == name
        return None, None if not_installed else f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return str(getattr(module, "__version__", "unknown")), None


def collect_environment() -> dict[str, Any]:
    """What a pretraining job would run with, as plain JSON-serialisable data.

    Returns a dict with ``sslpretrain`` (version), ``python`` (``version``, ``executable``),
    ``cpu_count``, ``packages`` (name -> version, ``None`` when missing or not importable),
    ``problems`` (name -> import error of a package that is installed but fails to import), ``torch_cuda``
    (CUDA version torch was built with, ``None`` for a CPU build), ``devices`` (one entry per
    accelerator: ``name`` such as ``cuda:0``, ``description``, ``memory_gib``) and
    ``default_device`` (``cuda``, ``mps`` or ``cpu``: what ``--device auto`` picks).
    """
    packages: dict[str, str | None] = {}
    problems: dict[str, str] = {}
    for name in (*REQUIRED_PACKAGES, "numpy", "SimpleITK", "nibabel"):
        packages[name], problem = _package_version(name)
        if problem is not None:
            problems[name] = problem
    environment: dict[str, Any] = {
        "sslpretrain": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "problems": problems,
        "torch_cuda": None,
        "devices": [],
        "default_device": "cpu",
        "doctor": doctor_report()[0],
    }
    if packages["torch"] is None:
        return environment
    import torch  # here, not at the top: ``--help`` and ``--version`` must stay instant

    environment["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            environment["devices"].append(
                {
                    "name": f"cuda:{index}",
                    "description": f"{properties.name}, compute capability {properties.major}.{properties.minor}",
                    "memory_gib": round(properties.total_memory / 2**30, 1),
                }
            )
        environment["default_device"] = "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        environment["devices"].append({"name": "mps", "description": "Apple GPU (Metal)", "memory_gib": None})
        environment["default_device"] = "mps"
    return environment


def format_environment(environment: dict[str, Any]) -> str:
    """The human-readable report printed by ``sslpretrain info``."""
    python = environment["python"]
    lines = [
        f"sslpretrain {environment['sslpretrain']}",
        f"python      {python['version']} ({python['executable']})",
        f"cpu cores   {environment['cpu_count']}",
    ]
    for name, version in environment["packages"].items():
        problem = environment["problems"].get(name)
        state = version or (f"INSTALLED BUT FAILS TO IMPORT ({problem})" if problem else "NOT INSTALLED")
        lines.append(f"{name:<11} {state}")
    if environment["packages"]["torch"] is not None:
        cuda = environment["torch_cuda"]
        lines.append(f"torch build {'CUDA ' + cuda if cuda else 'CPU only (no CUDA)'}")
    for device in environment["devices"]:
        memory = f", {device['memory_gib']} GiB" if device["memory_gib"] is not None else ""
        lines.append(f"device      {device['name']}: {device['description']}{memory}")
    if not environment["devices"]:
        lines.append("device      cpu only (no CUDA or MPS device found)")
    lines.append(f"default     --device auto uses {environment['default_device']}")
    if environment.get("doctor"):  # the same check the MedSegNAS panel and `medsegnas doctor` show
        lines += ["", "medsegnas doctor:", environment["doctor"]]
    return "\n".join(lines)


def command_info(args: argparse.Namespace) -> int:
    environment = collect_environment()
    print(json.dumps(environment, indent=2) if args.json else format_environment(environment))
    missing = [name for name in REQUIRED_PACKAGES if environment["packages"][name] is None]
    not_installed = [name for name in missing if name not in environment["problems"]]
    if not_installed:  # first: a missing torch is also why MONAI fails to import
        raise MedSegNASError(
            f"{', '.join(not_installed)} not installed in {sys.executable}: in 3D Slicer open the "
            "SSLPretrain module, which offers to install it; elsewhere "
            + (f"run `{install_command(not_installed)}`, " if install_command(not_installed) else "")
            + ("install torch (pytorch.org), " if "torch" in not_installed else "")
            + "then check with `medsegnas doctor`"
        )
    if missing:
        raise MedSegNASError(
            f"{', '.join(missing)} installed in {sys.executable} but failing to import (see above); "
            "reinstall it (in 3D Slicer: torch with the PyTorch Utils module)"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, subparsers = command_parser(
        "sslpretrain",
        "SSLPretrain: self-supervised pretraining and fine-tuning of Swin UNETR encoders.",
        f"sslpretrain {__version__}",
    )
    info = subparsers.add_parser(
        "info",
        help="show Python, PyTorch, MONAI and compute device information",
        description="Show what a pretraining job would run with: Python, package versions, "
        "PyTorch's CUDA build and the GPUs it sees. Exit code 1 when torch or MONAI is missing.",
    )
    info.add_argument("--json", action="store_true", help="print the information as JSON")
    info.set_defaults(func=command_info)
    add_commands(subparsers, COMMAND_MODULES)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
