"""``slicer.ScriptedLoadableModule`` and ``slicer.i18n`` as the panels use them (Slicer's behaviour).

The widget's ``parent`` is a ``qMRMLWidget`` with a vertical layout and an ``isEntered`` flag (set by
the harness when the module is shown or hidden, as Slicer's module panel does); the logic's parameter
node is the scene's singleton ``vtkMRMLScriptedModuleNode`` tagged with the module name.
"""

from __future__ import annotations

import importlib
import logging
import unittest
from pathlib import Path
from typing import Any

import slicer


def tr(text: str) -> str:
    return text


def translate(context: str, text: str) -> str:
    return text


class ScriptedLoadableModule:
    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title, parent.categories, parent.dependencies, parent.contributors = "", [], [], []
        parent.helpText = parent.acknowledgementText = ""
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename: str) -> str:
        return str(Path(self.parent.path).parent / "Resources" / filename)

    def runTest(self, msec: int = 100, **kwargs: Any) -> None:
        module = importlib.import_module(type(self).__module__)
        test = getattr(module, self.moduleName + "Test")()
        test.messageDelay = msec
        test.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: Any = None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.developerMode = False
        self.parent = parent
        self.layout = parent.layout()

    def resourcePath(self, filename: str) -> str:
        return str(Path(slicer.util.modulePath(self.moduleName)).parent / "Resources" / filename)

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent: Any = None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self) -> Any:
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            return node
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return slicer.mrmlScene.AddNode(node)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.moduleTestNames: list[str] = []
        super().__init__(*args, **kwargs)

    def delayDisplay(self, message: str, requestedDelay: int | None = None, msec: int | None = None) -> None:
        logging.info(message)
        DISPLAYED.append(message)

    def runTest(self) -> None:  # pragma: no cover - each module test overrides it
        pass


#: Messages the module self-tests showed with ``delayDisplay``.
DISPLAYED: list[str] = []
