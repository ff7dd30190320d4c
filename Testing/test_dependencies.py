"""One dependency list (``MedSegNASLib/dependencies.py``): pyproject, both panels' install lists and
``medsegnas doctor`` agree with it; the supported Slicer/Python versions are stated and checked.

The packages the workers really import are checked by ``test_dependency_closure.py``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from MedSegNASLib import dependencies as deps

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_dependencies_are_the_one_list() -> None:
    declared = _pyproject()["project"]["dependencies"]
    assert sorted(declared) == sorted(deps.pyproject_requirements())


def test_python_version_agrees_everywhere() -> None:
    project = _pyproject()
    minimum = ".".join(map(str, deps.MIN_PYTHON))
    assert project["project"]["requires-python"] == f">={minimum}"
    assert project["tool"]["ruff"]["target-version"] == "py" + minimum.replace(".", "")
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    slicer = ".".join(map(str, deps.MIN_SLICER_VERSION))
    assert f'VERSION_LESS "{slicer}"' in cmake and f"Requires 3D Slicer {slicer} or later" in cmake
    assert f"3D Slicer **{slicer} and later**" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_dependencies_module_parses_on_the_python_of_old_slicers() -> None:
    """Slicer 5.8's Python 3.9 must be able to import it, to show the 'needs Slicer 5.10' message."""
    source = (ROOT / "MedSegNAS" / "MedSegNASLib" / "dependencies.py").read_text(encoding="utf-8")
    ast.parse(source, feature_version=(3, 9))
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"__future__", "importlib", "shlex", "sys", "collections"}


@pytest.mark.parametrize(
    ("slicer", "python", "supported"),
    [
        ("5.8.1", (3, 9, 10), False),
        ("5.6.2", (3, 9, 10), False),
        ("5.10.0", (3, 12, 10), True),
        ("5.11.0-2026-01-01", (3, 12, 10), True),
        ("6.0.0", (3, 13, 1), True),
        (None, (3, 9, 18), False),  # outside Slicer: Python decides
        (None, (3, 11, 7), True),
    ],
)
def test_unsupported_slicer_message(slicer, python, supported) -> None:
    message = deps.unsupported_slicer_message(slicer, python)
    assert (message == "") == supported
    if not supported:
        assert "5.10 or later" in message


def test_panels_install_what_the_workers_import() -> None:
    """Defects 2 and 3: search/train need tensorboard, matplotlib, einops; SSLPretrain nibabel."""
    from MedSegNASLib.panels import panel_logic
    from SSLPretrainLib import panel_logic as ssl_panel

    assert {"tensorboard", "matplotlib", "einops", "nibabel", "monai", "torch"} <= set(
        panel_logic.REQUIRED_PACKAGES
    )
    assert {"nibabel", "einops", "tensorboard", "matplotlib", "monai", "torch"} <= set(
        ssl_panel.PRETRAIN_PACKAGES
    )
    assert dict(panel_logic.REQUIRED_PACKAGES) == deps.packages_for()
    assert dict(ssl_panel.PRETRAIN_PACKAGES) == deps.packages_for("ssl")
    assert {"filelock", "psutil", "nibabel", "torch"} <= set(panel_logic.PHANTOM_PACKAGES)


def test_panel_pip_lines_never_replace_what_slicer_ships() -> None:
    lines = deps.panel_requirement_lines()
    names = {_name(line) for line in lines}
    bundled = {name.lower() for name in deps.SLICER_BUNDLE}
    assert not names & bundled, names & bundled
    assert "torch" not in names  # the PyTorch extension installs it
    assert names == {_name(spec) for spec in deps.PIP_PACKAGES.values()}


def _medsegnas(*args: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    script = (
        "import sys\n"
        f"for name in {list(hide)!r}: sys.modules[name] = None  # as if not installed\n"
        "from MedSegNASLib.cli import main\n"
        f"sys.exit(main({list(args)!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )


def test_doctor_requirements_prints_the_panel_install_lines() -> None:
    result = _medsegnas("doctor", "--requirements")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == deps.panel_requirement_lines()


def test_doctor_names_what_is_missing_per_feature_and_the_command_that_fixes_it() -> None:
    result = _medsegnas("doctor", hide=("einops", "tensorboard"))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "MISSING einops, tensorboard" in lines["search/train"]
    assert "MISSING einops, tensorboard" in lines["ssl"]
    assert "MISSING einops" in lines["segment"] and "tensorboard" not in lines["segment"]
    assert lines["evaluate"].endswith("ok") and lines["phantom"].endswith("ok")
    fix = lines["fix:"]
    assert f"{sys.executable} -m pip install 'einops>=0.6' 'tensorboard>=2.14'" in fix
    healthy = _medsegnas("doctor")
    assert healthy.returncode == 0, healthy.stdout
    assert "everything MedSegNAS needs is installed" in healthy.stdout


def test_sslpretrain_environment_check_shows_the_same_doctor_report() -> None:
    from SSLPretrainLib.cli import collect_environment, format_environment

    environment = collect_environment()
    assert environment["doctor"] == deps.doctor_report()[0]
    assert deps.doctor_report()[0] in format_environment(environment)
