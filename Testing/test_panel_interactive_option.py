"""The panel's *interactive* option in Search and train (``MedSegNAS/MedSegNAS.py`` in the offscreen
harness): ticked, Train starts ``medsegnas train --interactive`` as a background job (cancelled here
once its worker runs); Tune refuses it with a message, and no run is left behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import panel_session  # noqa: E402
from panel_session import open_panel  # noqa: E402

slicer = pytest.importorskip("slicer")


@pytest.fixture
def slicer_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from panel_session.session(tmp_path, monkeypatch)


def test_interactive_option_trains_a_click_model_and_tune_refuses_it(slicer_app, phantom_dataset, tmp_path):
    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    assert ui.interactiveCheckBox.checked is False and w._parameterNode.interactive is False
    ui.runsFolderPathLineEdit.currentPath = str(tmp_path / "runs")
    ui.datasetPathLineEdit.currentPath = str(phantom_dataset(cases=2, size=32, seed=3))
    ui.networkComboBox.currentIndex = ui.networkComboBox.findText("unet")
    ui.epochsSpinBox.value, ui.patchSizeSpinBox.value = 1, 32
    ui.interactiveCheckBox.checked = True
    assert w._parameterNode.interactive is True  # saved with the scene

    app.click(ui.tuneButton)  # Tune trains automatic models only
    assert any("interactive" in text for text in app.dialogs), app.dialogs
    assert not list((tmp_path / "runs").glob("tune-*")) and ui.tuneButton.text == "Tune"

    app.click(ui.trainButton)
    assert (ui.trainButton.text, ui.trainButton.enabled) == ("Cancel", True)
    run = w._areas["train"].follower.run
    command = [str(token) for token in run.process.args]
    assert command[command.index("train") :][:1] == ["train"] and "--interactive" in command
    assert command[command.index("--network") + 1] == "unet"
    app.click(ui.trainButton)  # Cancel
    app.wait_until(lambda: ui.trainButton.text == "Train", 180, "the cancelled train job")
    assert run.read_status()["state"] in ("cancelled", "done"), run.read_status()
    # tryWithErrorDisplay shows the dialog and re-raises: Tune's refusal is the only error
    assert [str(error) for _slot, error in app.slot_errors] == [
        "Tune trains automatic models only; untick 'interactive', or Train an interactive model"
    ]
