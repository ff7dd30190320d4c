"""The modules' self-tests (Slicer's Reload and Test) and the panels' state classes (``panel_state``).

* ``MedSegNASTest`` / ``SSLPretrainTest`` run as Slicer runs them (``slicer.selfTests[name]()``) in
  the offscreen harness: they pass where the packages are installed, and skip with a message that
  names the missing ones where they are not (a build machine without nibabel).
* ``JobArea``: the button a run follows comes from the kind launched, not from a ``job.json`` the
  worker has not written yet (defect 6); ``ParameterNodeHolder``: the node is re-acquired after a
  scene close even while the module is hidden (defect 7); ``ReportedErrors``: once per message;
  ``ModelTask``: one model import at a time, its outcome from the worker (a real failing job).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import panel_session  # noqa: E402
from panel_session import ROOT, missing  # noqa: E402

slicer = pytest.importorskip("slicer")


@pytest.fixture
def slicer_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from panel_session.session(tmp_path, monkeypatch)


@pytest.mark.slow  # a segment job: about 20 s alone, more on a loaded machine
def test_medsegnas_self_test_passes(slicer_app) -> None:
    from slicer_harness import scripted

    slicer_app.load_module("MedSegNAS", ROOT / "MedSegNAS")
    scripted.DISPLAYED.clear()
    slicer.selfTests["MedSegNAS"]()
    assert scripted.DISPLAYED == ["Phantom case loaded", "Phantom segmented in the background"]


def test_model_task_runs_one_import_at_a_time_and_says_why_it_failed(tmp_path: Path) -> None:
    """A real import job of a folder that is not there: busy while it runs, then the worker's error."""
    import time

    from MedSegNASLib.panels import panel_logic
    from MedSegNASLib.panels.panel_state import ModelTask

    task, label = ModelTask("busy"), object()
    assert task.poll().bar == (0, 0) and not task.poll().finished  # nothing followed: an idle tick
    missing_bundle = tmp_path / "no-such-bundle"
    run = panel_logic.launch_model_import_job(str(missing_bundle), tmp_path / "runs", home=tmp_path / "home")
    task.start(panel_logic.JobFollower(run), label, "Imported as '{id}'.", "Not imported: {error}")
    with pytest.raises(RuntimeError, match="busy"):
        task.check_idle()
    deadline = time.monotonic() + 120
    while not (progress := task.poll()).finished:
        assert progress.bar == (0, 0) and progress.where is label  # an import has no byte count
        assert time.monotonic() < deadline, "the import job did not end"
        time.sleep(0.2)
    assert progress.where is label and progress.model == "" and progress.bar == (100, 0)
    assert progress.text.startswith("Not imported: ") and "no-such-bundle" in progress.text
    assert not task.busy
    task.check_idle()  # the next import may start


@pytest.mark.parametrize("name", ["MedSegNAS", "SSLPretrain"])
def test_self_tests_skip_with_a_clear_message_without_nibabel(
    slicer_app, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from slicer_harness import scripted

    slicer_app.load_module(name, ROOT / name)
    missing(monkeypatch, "nibabel")
    scripted.DISPLAYED.clear()
    slicer.selfTests[name]()  # raises nothing
    assert len(scripted.DISPLAYED) == 1
    assert scripted.DISPLAYED[0].startswith(f"{name} self-test skipped: nibabel not installed")


@pytest.mark.slow
def test_sslpretrain_self_test_passes(slicer_app) -> None:
    from slicer_harness import scripted

    slicer_app.load_module("SSLPretrain", ROOT / "SSLPretrain")
    scripted.DISPLAYED.clear()
    slicer.selfTests["SSLPretrain"]()
    assert len(scripted.DISPLAYED) == 1 and "2 unlabelled image(s)" in scripted.DISPLAYED[0]


# -- panel_state ---------------------------------------------------------------------------------


class _Follower:
    def __init__(self, path: Path, kind: str = "") -> None:
        from MedSegNASLib.jobs import RunDir

        self.run, self.kind = RunDir(path), kind


def test_job_area_follows_the_kind_launched_not_the_first_button(tmp_path: Path) -> None:
    from MedSegNASLib.panels.panel_state import JobArea

    area = JobArea({"search": "Search", "train": "Train"}, "trainRun", on_done=print)
    assert area.button_states(can_start=True) == {"search": ("Search", True), "train": ("Train", True)}
    area.follow(_Follower(tmp_path / "train-20260101-120000-abcdef"), "train")  # no job.json yet
    assert area.button_states(can_start=True) == {"search": ("Search", False), "train": ("Cancel", True)}
    area.stop()
    # re-attached without the launch: job.json's kind, else the run folder's name
    area.follow(_Follower(tmp_path / "train-20260101-120000-abcdef"))
    assert area.kind == "train"
    area.follow(_Follower(tmp_path / "x", kind="search"))
    assert area.kind == "search"
    with pytest.raises(ValueError, match="segment"):
        area.follow(_Follower(tmp_path / "segment-20260101-120000-abcdef"))


def test_parameter_node_holder_reacquires_after_a_scene_close_while_hidden() -> None:
    from MedSegNASLib.panels.panel_state import ParameterNodeHolder

    scene = slicer.vtkMRMLScene()

    def acquire():
        node = scene.GetSingletonNode("Test", "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag("Test")
            node = scene.AddNode(node)
        return node

    connected = []
    holder = ParameterNodeHolder(
        acquire, lambda node: connected.append(node) or len(connected), lambda n, t: None
    )
    holder.attach(gui=True)
    assert holder.gui_connected and connected == [holder.node]
    holder.detach_gui()  # module hidden: the node stays for the timers
    assert holder.node is not None and not holder.gui_connected
    scene.StartState(scene.CloseState)
    holder.release()  # StartClose
    assert holder.node is None
    scene.Clear(0)
    scene.EndState(scene.CloseState)
    holder.attach(gui=False)  # EndClose while hidden
    assert holder.node is acquire() and not holder.gui_connected and len(connected) == 1
    holder.attach(gui=True)  # shown again
    assert holder.gui_connected and len(connected) == 2


def test_reported_errors_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from MedSegNASLib.panels.panel_state import ReportedErrors

    errors = ReportedErrors()
    with caplog.at_level(logging.ERROR):
        assert errors.report("Cannot follow the job: gone", ValueError("gone"))
        assert not errors.report("Cannot follow the job: gone")
        assert errors.report("another")
    assert [r.getMessage() for r in caplog.records] == ["Cannot follow the job: gone", "another"]


@pytest.mark.parametrize("name", ["MedSegNAS", "SSLPretrain"])
def test_an_older_slicer_gets_a_clear_message_instead_of_the_panel(
    slicer_app, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    import qt

    monkeypatch.setattr(type(slicer.app), "applicationVersion", "5.8.1")
    _module, widget = slicer_app.load_module(name, ROOT / name)
    labels = [w.text for w in widget.parent.findChildren(qt.QLabel)]
    assert any("needs 3D Slicer 5.10 or later" in text and "5.8.1" in text for text in labels), labels
    assert not hasattr(widget, "ui")  # no buttons that would fail later
    slicer_app.enter(widget)  # showing the module does not raise either


def _run_folder(root: Path, kind: str, state: str, **fields):
    """A real run folder of ``kind`` in ``state`` (held by this process while not final, as a worker holds it)."""
    from MedSegNASLib.jobs import RunDir

    run = RunDir.create(root, kind)
    run.ensure_layout()
    run.write_job({"kind": kind})
    run.write_status(state=state, **fields)
    return run


def test_job_area_poll_ends_following_when_the_job_ends_and_names_the_result_to_load(tmp_path: Path) -> None:
    """A running job stays followed; a done job hands its follower over for loading its result, a
    failed one does not; an unreadable run folder stops the following with the reason."""
    from MedSegNASLib.panels.panel_jobs import JobFollower
    from MedSegNASLib.panels.panel_state import JobArea

    area = JobArea({"train": "Train"}, "trainRun", on_done=print)
    run = _run_folder(tmp_path, "train", "running")
    lock = run.acquire_lock()
    follower = JobFollower(run)
    area.follow(follower)
    polled = area.poll()
    assert not polled.update.finished and polled.ended is None and area.follower is follower
    run.write_status(state="done")
    lock.release()
    polled = area.poll()
    assert polled.update.finished and polled.ended is follower and not area.busy

    area.follow(JobFollower(_run_folder(tmp_path, "train", "failed", error="out of memory")))
    polled = area.poll()
    assert polled.update.state == "failed" and polled.ended is None and not area.busy

    broken = _run_folder(tmp_path, "train", "running")
    area.follow(JobFollower(broken))
    broken.status_json.write_text("{not json")
    polled = area.poll()
    assert polled.error is not None and polled.update is None and not area.busy


def test_job_area_reattaches_the_saved_run_else_a_live_run_of_its_kinds() -> None:
    from MedSegNASLib.panels.panel_state import JobArea

    area = JobArea({"search": "Search", "train": "Train"}, "trainRun", on_done=print)
    live = {"segment": {"path": "/runs/segment-1"}, "train": {"path": "/runs/train-2"}}
    assert area.run_to_follow("/runs/search-0", live) == "/runs/search-0"
    assert area.run_to_follow("", live) == "/runs/train-2"
    assert area.run_to_follow("", {"segment": {"path": "/runs/segment-1"}}) == ""


def test_followed_job_reports_how_the_evaluation_ended(tmp_path: Path) -> None:
    from MedSegNASLib.panels.panel_jobs import JobFollower
    from MedSegNASLib.panels.panel_state import FollowedJob

    job = FollowedJob()
    assert not job.busy and not job.poll().finished  # nothing followed: an idle tick
    run = _run_folder(tmp_path, "evaluate", "running")
    lock = run.acquire_lock()
    job.start(JobFollower(run))
    assert not job.poll().finished and job.busy
    run.write_status(state="failed", error="the reference has no segments")
    lock.release()
    outcome = job.poll()
    assert outcome.finished and not outcome.ok and outcome.error == "the reference has no segments"
    assert outcome.run == run and not job.busy
    job.start(JobFollower(_run_folder(tmp_path, "evaluate", "done")))
    outcome = job.poll()
    assert outcome.finished and outcome.ok and not job.busy
