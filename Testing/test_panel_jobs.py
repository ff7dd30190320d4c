"""Jobs as the panels launch them: worker environment, several processes under torchrun, resume.

The two-process test runs a real ``python -m torch.distributed.run --nproc_per_node 2`` launch
built by :func:`launch_job` (CPU, gloo): a small job script whose ranks all-reduce a number,
rank 0 writing the run directory by the job protocol. It is then resumed by :func:`resume_job`,
which must start two processes again (the count is recorded at launch).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.jobs import RunDir, refresh_status
from MedSegNASLib.panels.panel_jobs import (
    LAUNCH_INFO,
    JobFollower,
    launch_job,
    launched_processes,
    resume_job,
    thread_environment,
    torchrun_entry,
    usable_cpu_count,
    worker_environment,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="job workers need POSIX signals and flock")


def test_worker_threads_leave_a_core_free_and_keep_the_users_setting() -> None:
    cores = usable_cpu_count()
    assert 1 <= cores
    assert thread_environment(1, {}) == {
        "OMP_NUM_THREADS": str(max(1, cores - 1)),
        "MKL_NUM_THREADS": str(max(1, cores - 1)),
    }
    assert thread_environment(64, {})["OMP_NUM_THREADS"] == "1", "never fewer than one thread"
    assert thread_environment(2, {"OMP_NUM_THREADS": "7"}) == {
        "MKL_NUM_THREADS": str(max(1, (cores - 1) // 2))
    }
    environment = worker_environment()
    import MedSegNASLib

    assert environment["PYTHONPATH"].split(":")[0] == str(Path(MedSegNASLib.__file__).resolve().parents[1])


def test_several_processes_run_under_torch_distributed_run() -> None:
    assert torchrun_entry(1) == ("-m", "MedSegNASLib.cli")
    assert torchrun_entry(4, ("-m", "SSLPretrainLib.cli")) == (
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m", "SSLPretrainLib.cli",
    )  # fmt: skip
    with pytest.raises(MedSegNASError, match="at least 1"):
        torchrun_entry(0)


def test_training_command_for_two_gpus(tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer")  # noqa: F841 - panel_logic imports the MRML classes
    from MedSegNASLib.panels import panel_logic

    dataset = tmp_path / "dataset.json"
    dataset.write_text("{}")
    command = panel_logic.training_command(
        "train", dataset, gpus=2, python="PythonSlicer", network="unet", device="cuda", preset="small"
    )
    assert command == [
        "PythonSlicer", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "MedSegNASLib.cli", "train", "--dataset", str(dataset), "--preset", "small", "--device", "cuda",
        "--network", "unet",
    ]  # fmt: skip
    single = panel_logic.training_command("search", dataset, gpus=1, python="PythonSlicer")
    assert single[:4] == ["PythonSlicer", "-m", "MedSegNASLib.cli", "search"]
    with pytest.raises(MedSegNASError, match="not on 'mps'"):
        panel_logic.launch_training_job("search", dataset, tmp_path / "runs", gpus=2, device="mps")
    with pytest.raises(MedSegNASError, match="either a searched architecture"):
        panel_logic.launch_training_job("train", dataset, tmp_path / "runs", gpus=2)
    assert not (tmp_path / "runs").exists(), "refused settings leave no run folder"


#: A job whose ranks form a gloo group; rank 0 runs it under the job protocol.
DDP_JOB = textwrap.dedent(
    """
    import argparse, os, sys
    import torch
    import torch.distributed as dist
    from MedSegNASLib.jobs import add_job_arguments, run_job_command

    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("--steps", type=int, default=3)
    add_job_arguments(parser)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])

    def reduce_rank():
        dist.init_process_group("gloo")
        value = torch.tensor([float(rank + 1)])
        dist.all_reduce(value)
        dist.destroy_process_group()
        return value.item()

    def body(ctx):
        total = reduce_rank()
        for step in range(1, args.steps + 1):
            ctx.progress(step, args.steps, stage="demo")
        return {"world_size": int(os.environ["WORLD_SIZE"]), "sum": total,
                "threads": os.environ.get("OMP_NUM_THREADS"), "resumed": ctx.resuming}

    if rank == 0:
        sys.exit(run_job_command("ddpdemo", args, body, {"steps": args.steps}))
    reduce_rank()
    """
)


@pytest.mark.timeout(180)
def test_two_cpu_processes_launched_and_resumed_through_torchrun(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_JOB)
    run = launch_job(
        ["ddpdemo", "--steps", "3"], runs_root=tmp_path / "runs", entry=[str(script)], processes=2
    )
    assert json.loads((run.path / LAUNCH_INFO).read_text()) == {"processes": 2}
    update = JobFollower(run).wait(timeout_s=150)
    assert update.state == "done", run.worker_log.read_text()[-3000:]
    result = update.status["result"]
    assert (result["world_size"], result["sum"], result["resumed"]) == (2, 3.0, False)
    # A thread count set for the tests (conftest) is kept; otherwise each rank gets its share.
    assert result["threads"] == (
        os.environ.get("OMP_NUM_THREADS") or thread_environment(2, {})["OMP_NUM_THREADS"]
    )
    assert (update.step, update.total) == (3, 3)
    assert "torch.distributed.run --standalone --nproc_per_node 2" in run.worker_log.read_text()

    # Stopped (as if cancelled): resuming starts two processes again, with the recorded command.
    run.write_status(state="cancelled")
    resumed = resume_job(run.path, entry=[str(script)])
    assert launched_processes(resumed) == 2
    update = JobFollower(resumed).wait(timeout_s=150)
    assert update.state == "done", resumed.worker_log.read_text()[-3000:]
    assert (update.status["result"]["world_size"], update.status["result"]["resumed"]) == (2, True)
    assert refresh_status(RunDir(run.path))["state"] == "done"


def test_one_look_at_a_run_reads_state_result_and_new_events(tmp_path: Path) -> None:
    from MedSegNASLib.panels.panel_jobs import poll_job, run_is_live, run_result

    run = RunDir.create(tmp_path / "runs", "search")
    run.write_status(state="running", pid=os.getpid())
    run.append_event({"type": "progress", "step": 1, "total": 4})
    assert run_is_live(run.path) and run_result(run.path) == {}
    status, events, offset = poll_job(run.path)
    assert status["state"] == "running"
    assert [(e["type"], e.get("step")) for e in events] == [("progress", 1)]

    run.append_event({"type": "progress", "step": 4, "total": 4})
    run.write_status(state="done", result={"best_val_dice_mean": 0.8})
    status, events, _ = poll_job(run.path, offset)
    assert status["state"] == "done"
    assert [e.get("step") for e in events] == [4], "only the events after the offset"
    assert not run_is_live(run.path)
    assert run_result(run.path) == {"best_val_dice_mean": 0.8}


def test_ensure_packages_installs_only_what_is_missing_and_says_what_still_is() -> None:
    from MedSegNASLib.panels.panel_logic import ensure_packages

    asked: list[str] = []
    pip_calls: list[list[str]] = []
    present = {"json": "json", "numpy": "numpy"}

    def confirm(names: str) -> bool:
        asked.append(names)
        return True

    def no_torch() -> None:
        raise AssertionError("torch is installed here: it must not be reinstalled")

    assert ensure_packages(
        present, confirm=confirm, install_torch=no_torch, install_with_pip=pip_calls.append
    )
    assert asked == [] and pip_calls == [], "nothing missing: no question, no installation"

    wanted = {**present, "medsegnas_no_such_package": "medsegnas-no-such-package>=1"}
    declined = ensure_packages(
        wanted, confirm=lambda names: False, install_torch=no_torch, install_with_pip=pip_calls.append
    )
    assert declined is False and pip_calls == []
    with pytest.raises(MedSegNASError, match="Could not install: medsegnas_no_such_package"):
        ensure_packages(wanted, confirm=confirm, install_torch=no_torch, install_with_pip=pip_calls.append)
    assert asked == ["medsegnas_no_such_package"]
    assert pip_calls == [["medsegnas-no-such-package>=1"]], "only the missing requirement goes to pip"


def test_torch_comes_from_the_pytorch_extension_or_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from MedSegNASLib.panels.panel_logic import install_torch_from_extension

    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the extension is not installed
    with pytest.raises(MedSegNASError, match="install the PyTorch extension"):
        install_torch_from_extension()

    calls: list[bool] = []

    class Logic:  # the extension's logic class, as Slicer's PyTorchUtils module defines it
        def __init__(self, result):
            self.result = result

        def installTorch(self, askConfirmation: bool):  # noqa: N802 (Slicer's name)
            calls.append(askConfirmation)
            return self.result

    extension = types.ModuleType("PyTorchUtils")
    extension.PyTorchUtilsLogic = lambda: Logic(result=object())
    monkeypatch.setitem(sys.modules, "PyTorchUtils", extension)
    install_torch_from_extension()
    assert calls == [False], "installed without a second question (the panel asked already)"
    extension.PyTorchUtilsLogic = lambda: Logic(result=None)
    with pytest.raises(MedSegNASError, match="could not be installed"):
        install_torch_from_extension()
