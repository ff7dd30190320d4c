#!/usr/bin/env python3
"""Developer entry point: the README's two commands, on a fresh machine with only Python >= 3.10.

    python3 dev.py demo     # run the demo on built-in phantom data (no download)
    python3 dev.py test     # run the test suite (pytest arguments may follow: dev.py test -k jobs)

Both create ``.venv/`` next to this file on first use and install everything into it: torch
(``MEDSEGNAS_TORCH``, default ``torch==2.13.0``; set it to e.g. ``torch`` or a local wheel), then
this project with its test extras. Later runs reinstall only when ``pyproject.toml`` changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MEDSEGNAS_VENV", ROOT / ".venv"))
TORCH_SPEC = os.environ.get("MEDSEGNAS_TORCH", "torch==2.13.0")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def ensure_environment() -> Path:
    """Create the virtual environment and install the project into it (idempotent)."""
    if sys.version_info < (3, 10):  # noqa: UP036 (dev.py itself must run on any python3 to say this)
        sys.exit(f"error: Python >= 3.10 is required, this is {sys.version.split()[0]}")
    python = venv_python()
    if not python.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".medsegnas-install-stamp"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH_SPEC.encode()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    pip = [python, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    has_torch = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        # torch first and explicitly: a bare "torch" requirement from the project would pull the
        # default (often multi-GB CUDA) build; MEDSEGNAS_TORCH lets a user choose.
        run([*pip, TORCH_SPEC])
    run([*pip, "-e", f"{ROOT}[test]"])
    stamp.write_text(wanted + "\n")
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    python = ensure_environment()
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    if command == "setup":
        return 0
    if command == "demo":
        return subprocess.call([python, "-m", "MedSegNASLib.cli", "demo", *rest], cwd=ROOT, env=env)
    return subprocess.call([python, "-m", "pytest", *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
