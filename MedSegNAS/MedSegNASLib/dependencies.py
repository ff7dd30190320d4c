"""The one list of Python packages MedSegNAS needs, per feature, and the check both panels show.

Everything that installs or declares packages comes from here:

* the panels' install lists (``panel_logic.REQUIRED_PACKAGES``, ``PHANTOM_PACKAGES`` and
  ``SSLPretrainLib.panel_logic.PRETRAIN_PACKAGES``) are :func:`packages_for` of their features;
* ``pyproject.toml``'s ``dependencies`` equal :func:`pyproject_requirements` (checked by
  ``Testing/test_dependencies.py``);
* ``medsegnas doctor`` prints :func:`doctor_report` (what this Python has and lacks for each
  feature, and the one command that fixes it) and ``medsegnas doctor --requirements`` prints
  :func:`panel_requirement_lines` (the pip lines the panels install, one per line);
* ``Testing/test_dependency_closure.py`` runs every worker kind in a fresh environment holding only
  what Slicer bundles, torch and :func:`panel_requirement_lines`.

Packages that Slicer ships (:data:`SLICER_PACKAGES`: numpy, scipy, SimpleITK, requests, pydicom,
Pillow) are declared for a plain ``pip install`` but never installed or upgraded by the panels:
replacing them breaks Slicer. torch comes from Slicer's PyTorch extension (it picks the build for
the machine's GPU), so it is not in the pip lines either.

This module imports nothing but the standard library and parses on any Python 3, so that Slicer
can say which Slicer versions are supported (:func:`unsupported_slicer_message`) before it imports
code that needs Python 3.10.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from collections import OrderedDict

# Keep this file free of Python >= 3.10 syntax and library calls (see the module docstring).

#: Oldest supported Slicer release (it ships Python 3.12; Slicer 5.8 ships 3.9).
MIN_SLICER_VERSION = (5, 10)
#: Oldest Python the Lib runs on (``zip(strict=)``, ``X | Y`` in isinstance, ``itertools.pairwise``).
MIN_PYTHON = (3, 10)

#: Packages Slicer's Python ships (import name -> requirement for a plain pip install). The panels
#: never install or upgrade them; ``pyproject.toml`` declares them for installs outside Slicer.
SLICER_PACKAGES = OrderedDict(
    [
        ("numpy", "numpy>=1.24"),
        ("scipy", "scipy>=1.10"),
        ("SimpleITK", "SimpleITK>=2.3"),
        ("pydicom", "pydicom>=2.4"),
    ]
)
#: What Slicer 5.10's Python bundles besides the above (import-free; for the closure test's
#: stand-in environment): the requests stack, the DICOM stack (pydicom, Pillow, six, retrying,
#: dicomweb-client), packaging.
SLICER_BUNDLE = (
    "numpy",
    "scipy",
    "SimpleITK",
    "requests",
    "pydicom",
    "pillow",
    "six",
    "retrying",
    "dicomweb-client",
    "packaging",
)
#: torch: from the PyTorch extension inside Slicer; its pip requirement elsewhere.
#: The range is the one the untrusted-bundle safety argument holds for (models/capabilities.py).
TORCH = ("torch", "torch>=2.5,<2.14")
#: Packages the panels install with pip (import name -> pip requirement). Slicer bundles none.
PIP_PACKAGES = OrderedDict(
    [
        ("monai", "monai>=1.5,<1.7"),
        ("nibabel", "nibabel>=5.0"),
        ("einops", "einops>=0.6"),
        ("tensorboard", "tensorboard>=2.14"),
        ("matplotlib", "matplotlib>=3.7"),
        ("yaml", "pyyaml>=6.0"),
        ("tqdm", "tqdm>=4.60"),
        ("filelock", "filelock>=3.13"),
        ("psutil", "psutil>=5.9"),
        ("optuna", "optuna>=3.2"),
    ]
)

#: What every job needs: run-directory lock (filelock), cancel and liveness of the process tree.
_JOB = ("filelock", "psutil")
#: Reading and writing volumes (SimpleITK for geometry and DICOM, nibabel for NIfTI voxels).
_VOLUMES = ("numpy", "scipy", "SimpleITK", "nibabel")
#: Training with MONAI: Swin UNETR needs einops; TensorBoard logs; curves and pictures (matplotlib).
_TRAINING = (*_JOB, *_VOLUMES, "torch", "monai", "einops", "tensorboard", "matplotlib", "yaml")

#: Every feature and the import names its workers and buttons need (what each is for, below).
FEATURES = OrderedDict(
    [
        # every job, and the progress bar when a job runs in a terminal (tqdm)
        ("jobs", (*_JOB, "tqdm")),
        # medsegnas phantom: SimpleITK/nibabel write volumes, torch saves the checkpoint
        ("phantom", (*_JOB, *_VOLUMES, "torch")),
        # models import/download (bundle checks load weights with torch, read YAML configs)
        ("models", (*_JOB, "torch", "monai", "yaml")),
        # medsegnas segment (MONAI bundles; Swin UNETR bundles need einops)
        ("segment", (*_JOB, *_VOLUMES, "torch", "monai", "yaml", "einops")),
        # medsegnas search and train: TensorBoard logs, topology picture and curves (matplotlib)
        ("search/train", _TRAINING),
        # medsegnas tune: the trainer's packages plus Optuna (study, sampler, pruner, importances)
        ("tune", (*_TRAINING, "optuna")),
        # medsegnas evaluate and the panel's Evaluate (metrics from MONAI)
        ("evaluate", (*_JOB, *_VOLUMES, "torch", "monai")),
        # sslpretrain pretrain, finetune, fewshot (Swin UNETR: einops; few-shot plot: matplotlib)
        ("ssl", _TRAINING),
        # pictures: dataset previews, topology pictures, few-shot plots
        ("pictures", ("matplotlib",)),
    ]
)

#: Import name -> requirement of every package named above.
ALL_PACKAGES = OrderedDict([*SLICER_PACKAGES.items(), TORCH, *PIP_PACKAGES.items()])


def _check_names() -> None:
    unknown = {name for names in FEATURES.values() for name in names} - set(ALL_PACKAGES)
    if unknown:  # a typo here would silently drop a package from every list
        raise ValueError(f"features name unknown packages: {sorted(unknown)}")


_check_names()


def packages_for(*features: str) -> dict[str, str]:
    """Import name -> pip requirement of what ``features`` need (all features when none given),
    in :data:`ALL_PACKAGES` order, Slicer's own packages included (see :func:`installable`)."""
    unknown = [feature for feature in features if feature not in FEATURES]
    if unknown:
        raise KeyError(f"unknown feature(s) {unknown}; known: {', '.join(FEATURES)}")
    wanted = {name for feature in (features or tuple(FEATURES)) for name in FEATURES[feature]}
    return OrderedDict((name, spec) for name, spec in ALL_PACKAGES.items() if name in wanted)


def installable(packages: dict[str, str]) -> dict[str, str]:
    """``packages`` without those Slicer ships (never replaced) and without torch (PyTorch extension)."""
    return OrderedDict((name, spec) for name, spec in packages.items() if name in PIP_PACKAGES)


def panel_requirement_lines() -> list[str]:
    """The pip requirement lines the panels install (every feature), one per package."""
    return list(installable(packages_for()).values())


def pyproject_requirements() -> list[str]:
    """What ``pyproject.toml`` declares as ``dependencies``: torch, Slicer's packages, the pip list."""
    return [TORCH[1], *SLICER_PACKAGES.values(), *PIP_PACKAGES.values()]


def is_installed(name: str) -> bool:
    """Whether ``name`` (an import name) can be imported here; nothing is imported."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without spec
        return False


def missing_packages(packages: dict[str, str] | None = None) -> list[str]:
    """Import names of ``packages`` (default: every feature's) this Python cannot import."""
    return [name for name in (packages if packages is not None else packages_for()) if not is_installed(name)]


def install_command(missing: list[str], python: str | None = None) -> str:
    """The one shell command that installs the pip packages among ``missing`` into ``python``
    (default: this interpreter; in Slicer that is PythonSlicer's Python). "" when none is pip's."""
    specs = [PIP_PACKAGES[name] for name in missing if name in PIP_PACKAGES]
    if not specs:
        return ""
    return " ".join(
        shlex.quote(token) for token in [python or sys.executable, "-m", "pip", "install", *specs]
    )


def _parse_version(text: str | None) -> tuple[int, ...] | None:
    numbers = []
    for part in str(text or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers) or None


def unsupported_slicer_message(
    slicer_version: str | None = None, python_version: tuple[int, ...] | None = None
) -> str:
    """Why this Slicer (its ``slicer.app.applicationVersion``, e.g. ``"5.8.1"``) or this Python
    cannot run MedSegNAS, or "" when both are supported (unknown Slicer version: Python decides)."""
    python_version = tuple(python_version or sys.version_info[:3])
    slicer = _parse_version(slicer_version)
    needed = ".".join(map(str, MIN_SLICER_VERSION))
    if slicer is not None and slicer[:2] < MIN_SLICER_VERSION:
        return (
            f"MedSegNAS needs 3D Slicer {needed} or later (this is Slicer {slicer_version}, with Python "
            f"{'.'.join(map(str, python_version[:2]))}); install a newer Slicer from download.slicer.org."
        )
    if python_version[:2] < MIN_PYTHON:
        return (
            f"MedSegNAS needs Python {'.'.join(map(str, MIN_PYTHON))} or later (3D Slicer {needed} or later); "
            f"this is Python {'.'.join(map(str, python_version[:3]))}."
        )
    return ""


def doctor_report(python: str | None = None) -> tuple[str, bool]:
    """What this Python has and lacks for each feature, and the command that fixes it.

    Returns:
        ``(text, ok)``: the report's lines, and whether every feature can run.
    """
    lines = []
    problem = unsupported_slicer_message()
    lines.append(f"Python {sys.version.split()[0]} ({sys.executable}): {problem or 'supported'}")
    missing_all: list[str] = []
    for feature, names in FEATURES.items():
        missing = [name for name in names if not is_installed(name)]
        missing_all += [name for name in missing if name not in missing_all]
        lines.append(f"{feature:<13} " + (f"MISSING {', '.join(missing)}" if missing else "ok"))
    command = install_command(missing_all, python)
    if command:
        lines.append(f"fix: {command}")
    if TORCH[0] in missing_all:
        lines.append(
            "fix torch: in Slicer install the PyTorch extension (Extensions Manager), which picks the build "
            "for your GPU; elsewhere see https://pytorch.org/get-started"
        )
    shipped = [name for name in missing_all if name in SLICER_PACKAGES]
    if shipped:
        lines.append(
            f"{', '.join(shipped)}: shipped with Slicer; outside Slicer: "
            + " ".join(shlex.quote(token) for token in [python or sys.executable, "-m", "pip", "install"])
            + " "
            + " ".join(shlex.quote(ALL_PACKAGES[name]) for name in shipped)
        )
    if not missing_all and not problem:
        lines.append("everything MedSegNAS needs is installed")
    return "\n".join(lines), not missing_all and not problem


def register(subparsers) -> None:  # argparse._SubParsersAction
    """Add ``medsegnas doctor [--requirements]``."""
    doctor = subparsers.add_parser(
        "doctor",
        help="what this Python has and lacks for each feature, and the command that fixes it",
        description="Check which packages each feature (segment, search/train, evaluate, SSL, pictures, "
        "jobs, models) needs and this Python lacks, and print the one command that installs them. "
        "Exit code 1 when something is missing.",
    )
    doctor.add_argument(
        "--requirements",
        action="store_true",
        help="print the pip requirement lines the Slicer panels install, one per line "
        "(torch, from Slicer's PyTorch extension, and packages Slicer ships are not among them)",
    )
    doctor.set_defaults(func=doctor_command)


def doctor_command(args) -> int:
    if args.requirements:
        print("\n".join(panel_requirement_lines()))
        return 0
    text, ok = doctor_report()
    print(text)
    return 0 if ok else 1
