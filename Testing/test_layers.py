"""The layering rule of the Lib packages: ML code never imports Slicer or Qt.

Workers run in a plain Python without Slicer, so only the MRML layer may import ``slicer`` (the
classes of the ``slicer-core`` wheel: nodes, segmentations, logic): ``slicer_bridge.py`` and the
panels' logic modules (``panel_logic.py``, ``panel_runs.py``, ``panel_terminology.py``). No Lib
module imports a GUI toolkit; the Qt code is in the module files ``MedSegNAS.py``/``SSLPretrain.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBS = [ROOT / "MedSegNAS" / "MedSegNASLib", ROOT / "SSLPretrain" / "SSLPretrainLib"]
#: The MRML layer: the only Lib modules that may import ``slicer``.
MRML_MODULES = {
    "slicer_bridge.py",
    "panel_logic.py",
    "panel_runs.py",
    "panel_terminology.py",
    "segment_editor_logic.py",
}
GUI_PACKAGES = {"qt", "ctk", "Qt", "PySide6", "PySide2", "PyQt5", "PyQt6", "vtkmodules.qt"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


LIB_FILES = sorted(path for lib in LIBS for path in lib.rglob("*.py"))


@pytest.mark.parametrize("path", LIB_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lib_module_imports_no_gui_and_slicer_only_in_the_mrml_layer(path: Path) -> None:
    roots = _imported_roots(path)
    assert not roots & GUI_PACKAGES, f"{path.name} imports a GUI toolkit: {sorted(roots & GUI_PACKAGES)}"
    if path.parent.name == "MedSegNASLib" and path.name in MRML_MODULES:
        return
    assert "slicer" not in roots, f"{path.name} imports slicer: MRML code belongs in {sorted(MRML_MODULES)}"


def test_the_rule_sees_the_imports_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom qt import QTimer\ndef f():\n    import slicer.util\n")
    assert {"qt", "slicer", "os"} <= _imported_roots(sample)
