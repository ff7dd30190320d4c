#!/usr/bin/env python3
"""Rewrite each module's MODULE_PYTHON_SCRIPTS list in its CMakeLists.txt from the files on disk.

Slicer installs only the files a module lists; Testing/test_module_skeletons.py fails when a .py
file is missing from the list. Run this after adding or removing module files:

    python3 tools/update_cmake_lists.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("MedSegNAS", "SSLPretrain")


def module_scripts(module: str) -> list[str]:
    folder = ROOT / module
    files = [f"{module}.py"]
    lib = folder / f"{module}Lib"
    # Top-level Lib files first, then sub-packages, each sorted (the order the list had by hand).
    top = sorted(p for p in lib.glob("*.py"))
    nested = sorted(p for p in lib.rglob("*.py") if p.parent != lib and "__pycache__" not in p.parts)
    files += [p.relative_to(folder).as_posix() for p in top + nested]
    # Scripted Segment Editor effects, each in a ``SegmentEditor*Lib`` folder (Slicer's convention;
    # outside the Lib, which never imports qt).
    effects = sorted(p for p in folder.glob("SegmentEditor*Lib/*.py"))
    files += [p.relative_to(folder).as_posix() for p in effects]
    # Literal paths, not ${MODULE_NAME}...: a plain text search then finds every listed file.
    return files


def main() -> None:
    for module in MODULES:
        cmake = ROOT / module / "CMakeLists.txt"
        text = cmake.read_text()
        body = "".join(f"  {name}\n" for name in module_scripts(module))
        new = re.sub(
            r"set\(MODULE_PYTHON_SCRIPTS\n.*?\n  \)",
            f"set(MODULE_PYTHON_SCRIPTS\n{body}  )",
            text,
            flags=re.S,
        )
        if new != text:
            cmake.write_text(new)
            print(f"updated {cmake.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
