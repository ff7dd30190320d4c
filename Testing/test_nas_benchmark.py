"""``medsegnas benchmark nas``: the searched network against random architectures and size-matched baselines.

The whole protocol runs once at toy size as a real background worker: it is cancelled with SIGTERM
after the searched network is retrained, resumed, and must then finish without redoing the
finished sub-runs, with one row per model and seed scored on the test cases only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import events_of, finish, start_worker, wait_for
from MedSegNASLib import cli
from MedSegNASLib.data import load_dataset
from MedSegNASLib.jobs import EXIT_CANCELLED, RunDir, cancel
from MedSegNASLib.nas.benchmark import format_table, match_baseline_size, summarize_rows
from MedSegNASLib.nas.decode import load_arch_json
from monai.networks.nets import SegResNet, UNet

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEARCH = {
    "epochs": 2,
    "warmup_epochs": 1,
    "val_interval": 1,
    "crops_per_case": 1,
    "max_patch_size": [32, 32, 32],
}
TRAIN = {"epochs": 1, "val_interval": 1, "crops_per_case": 1, "max_patch_size": [32, 32, 32]}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("network", ["unet", "segresnet"])
def test_baselines_are_scaled_to_the_parameter_count_asked_for(network: str) -> None:
    for target in (2_000_000, 8_000_000):
        kwargs, params = match_baseline_size(network, target, "tiny", in_channels=1, num_classes=5)
        cls = UNet if network == "unet" else SegResNet
        assert _count(cls(spatial_dims=3, in_channels=1, out_channels=5, **kwargs)) == params
        if network == "unet":  # one channel of width changes a UNet by far less than 25%
            assert abs(params - target) / target < 0.25
            assert kwargs["strides"] == [2, 2, 2] and kwargs["num_res_units"] == 2
        else:  # widths in steps of 8 (group norm of 8 groups): the closest of them
            assert kwargs["init_filters"] % 8 == 0
            for other in (kwargs["init_filters"] - 8, kwargs["init_filters"] + 8):
                if other >= 8:
                    wider = cls(
                        spatial_dims=3, in_channels=1, out_channels=5, **{**kwargs, "init_filters": other}
                    )
                    assert abs(_count(wider) - target) >= abs(params - target)


def test_summary_pairs_the_searched_network_with_baselines_and_randoms_per_seed_and_case() -> None:
    def row(model, kind, seed, cases, params=1_000_000):
        values = list(cases.values())
        return {
            "model": model, "kind": kind, "seed": seed, "params": params,
            "test_dice_mean": sum(values) / len(values), "test_dice": {"liver": sum(values) / len(values)},
            "test_hd95_mm": {"liver": 5.0}, "test_hd95_mean_mm": 5.0, "test_dice_cases": cases,
        }  # fmt: skip

    rows = [
        row("dints-searched", "searched", 0, {"a": 0.8, "b": 0.6}),
        row("dints-searched", "searched", 1, {"a": 0.7, "b": 0.7}),
        row("unet-matched", "baseline", 0, {"a": 0.7, "b": 0.7}),
        row("unet-matched", "baseline", 1, {"a": 0.6, "b": 0.6}),
        row("unet-standard", "baseline", 0, {"a": 0.1, "b": 0.1}),
        row("dints-random-0", "random", 0, {"a": 0.9, "b": 0.9}),
        row("dints-random-1", "random", 0, {"a": 0.5, "b": 0.5}),
    ]
    summary = summarize_rows(rows, ["liver"])
    searched = summary["models"]["dints-searched"]["test_dice_mean"]
    assert (
        searched["mean"] == pytest.approx(0.7) and searched["sd"] == pytest.approx(0.0) and searched["n"] == 2
    )
    assert summary["models"]["dints-random"]["runs"] == 2  # random architectures are one group
    assert summary["best_baseline"] == "unet-matched"
    versus_baseline, versus_random = summary["comparisons"]
    # pairs (seed, case): 0.8-0.7, 0.6-0.7, 0.7-0.6, 0.7-0.6
    assert versus_baseline["pairs"] == 4 and versus_baseline["mean_difference"] == pytest.approx(0.05)
    assert (versus_baseline["searched_better"], versus_baseline["searched_worse"]) == (3, 1)
    # seed 0 only has randoms (mean 0.7 on both cases): 0.8-0.7, 0.6-0.7
    assert versus_random["pairs"] == 2 and versus_random["mean_difference"] == pytest.approx(0.0)
    assert versus_random["random_architectures_beaten"] == "1 of 2"
    table = format_table(summary, ["liver"])
    assert "| DiNTS, searched | 2 |" in table and "0.700 ± 0.000" in table and "UNet, standard size" in table


def test_a_dataset_without_labelled_test_cases_is_refused_before_any_run(
    phantom_dataset: Callable[..., Path], tmp_path: Path, capsys
) -> None:
    dataset = phantom_dataset(cases=6, size=32, seed=3)  # no test cases
    code = cli.main(["benchmark", "nas", "--dataset", str(dataset), "--run-dir", str(tmp_path / "b")])
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "no labelled test case" in error
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(sys.platform == "win32", reason="jobs are stopped with POSIX signals")
def test_benchmark_runs_cancels_resumes_and_scores_every_model_on_the_test_cases(
    phantom_dataset: Callable[..., Path], json_file: Callable[[str, object], Path], tmp_path: Path
) -> None:
    dataset = phantom_dataset(cases=6, size=32, seed=3, test_cases=2)
    argv = [
        "benchmark", "nas", "--dataset", str(dataset), "--seeds", "0", "--random", "1", "--baselines", "unet",
        "--search-config", str(json_file("search.json", SEARCH)),
        "--train-config", str(json_file("train.json", TRAIN)), "--device", "cpu", "--proxy-cases", "2",
    ]  # fmt: skip
    run = start_worker(argv, tmp_path / "bench")
    searched_run = RunDir(run.path / "subruns" / "train-dints-searched-s0")
    wait_for(
        lambda: searched_run.read_status().get("state") == "done", timeout=900, what="the searched retrain"
    )
    assert cancel(run, grace_s=600) == "cancelled"
    assert run.process.wait(timeout=60) == EXIT_CANCELLED
    search_run = RunDir(run.path / "subruns" / "search-s0")
    search_events = len(events_of(search_run))
    searched_events = len(events_of(searched_run))

    # Resuming with other settings is refused before anything runs; the run stays cancelled.
    other = [*argv[:7], "2", *argv[8:]]
    assert argv[6] == "--random" and cli.main([*other, "--run-dir", str(run.path), "--resume"]) == 1
    assert run.read_status()["state"] == "cancelled"

    resumed = start_worker([*argv, "--resume"], run.path)
    assert finish(resumed, timeout=900) == 0
    # Finished sub-runs were not run again.
    assert len(events_of(search_run)) == search_events and len(events_of(searched_run)) == searched_events

    artifacts = run.path / "artifacts"
    report = json.loads((artifacts / "benchmark.json").read_text())
    rows = {row["model"]: row for row in report["rows"]}
    assert set(rows) == {
        "dints-searched",
        "dints-random-0",
        "dints-proxy-data",
        "unet-matched",
        "unet-standard",
    }
    assert [rows[m]["kind"] for m in sorted(rows)] == [
        "searched",
        "random",
        "searched",
        "baseline",
        "baseline",
    ]
    assert len(rows["dints-proxy-data"]["proxy_cases"]) == 2
    effect = report["summary"]["proxy_data"]
    assert effect["per_seed"][0]["search_seconds_proxy"] > 0 and effect["test_dice_kept_fraction"]["n"] in (
        0,
        1,
    )
    test_names = [case.name for case in load_dataset(dataset).test]
    for model, row in rows.items():
        sub = RunDir(run.path / row["run"])
        summary = json.loads((sub.artifacts / "summary.json").read_text())
        split = sub.read_job()["config"]["dataset"]["split"]
        assert not set(test_names) & {*split["train"], *split["validation"]}, (
            model
        )  # nothing selected on test
        assert row["seed"] == 0 and row["params"] == summary["parameters"] and row["test_cases"] == test_names
        assert 0.0 <= row["test_dice_mean"] <= 1.0 and set(row["test_dice"]) == set(report["organs"])
        assert row["train_seconds"] > 0 and row["flops_per_window"] > 0 and row["cpu_latency_ms"] > 0
        assert row["train_steps"] == rows["dints-searched"]["train_steps"]  # the same training budget
    searched_params = rows["dints-searched"]["params"]
    assert rows["dints-random-0"]["params"] <= searched_params
    assert abs(rows["unet-matched"]["params"] - searched_params) / searched_params < 0.25
    assert load_arch_json(run.path / rows["dints-random-0"]["arch"]).search_space.num_blocks == 4
    assert {c["versus"].split(" (")[0] for c in report["summary"]["comparisons"]} == {
        "best baseline",
        "mean of the random architectures of the same seed",
    }
    table = (artifacts / "benchmark.md").read_text()
    assert table.startswith("| model |") and "DiNTS, random architecture" in table
    assert (artifacts / "dice_vs_params.png").read_bytes()[:8] == PNG_MAGIC
    assert run.read_status()["state"] == "done"


def test_proxy_data_summary_reports_search_time_saved_and_dice_kept() -> None:
    def row(model, seed, dice, seconds):
        return {
            "model": model, "kind": "searched", "seed": seed, "params": 1, "test_dice_mean": dice,
            "test_dice": {"liver": dice}, "test_hd95_mm": {"liver": 1.0}, "search_seconds": seconds,
            "test_dice_cases": {"a": dice}, "proxy_cases": ["c1", "c2"],
        }  # fmt: skip

    rows = [row("dints-searched", 0, 0.8, 100.0), row("dints-proxy-data", 0, 0.6, 25.0)]
    effect = summarize_rows(rows, ["liver"])["proxy_data"]
    assert effect["search_time_saved_fraction"]["mean"] == pytest.approx(0.75)
    assert effect["test_dice_kept_fraction"]["mean"] == pytest.approx(0.75)
    table = format_table(summarize_rows(rows, ["liver"]), ["liver"])
    assert "search time saved 75 %" in table and "Dice kept 75 %" in table and "on 2 k-centre cases" in table


def test_spleen_script_holds_out_a_labelled_seeded_test_split(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "spleen_benchmark", ROOT / "benchmarks" / "spleen_benchmark.py"
    )
    spleen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(spleen)
    task = tmp_path / "Task09_Spleen"
    task.mkdir()
    entries = [
        {"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"}
        for i in range(12)
    ]
    msd = {"name": "Spleen", "labels": {"0": "background", "1": "spleen"}, "modality": {"0": "CT"},
           "training": entries, "test": ["./imagesTs/spleen_99.nii.gz"]}  # fmt: skip
    (task / "dataset.json").write_text(json.dumps(msd))
    first = json.loads(spleen.write_benchmark_split(task, 3, seed=0).read_text())
    again = json.loads(spleen.write_benchmark_split(task, 3, seed=0).read_text())
    other = json.loads(spleen.write_benchmark_split(task, 3, seed=1).read_text())
    assert first == again and first["test"] != other["test"]
    assert len(first["test"]) == first["numTest"] == 3 and len(first["training"]) == first["numTraining"] == 9
    assert all("label" in entry for entry in first["test"])
    assert not {e["image"] for e in first["test"]} & {e["image"] for e in first["training"]}
    assert load_dataset(task / "medsegnas_benchmark.json").test[0].label is not None
    with pytest.raises(SystemExit, match="--test-cases"):
        spleen.write_benchmark_split(task, 11)


def test_gpu_check_of_the_benchmark_says_when_there_is_no_gpu(tmp_path: Path) -> None:
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the check would run")
    script = ROOT / "Testing" / "gpu_check_benchmark.py"
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr
    assert not list(tmp_path.iterdir())


def test_job_seconds_add_up_every_session_of_a_resumed_or_killed_run(tmp_path: Path) -> None:
    from MedSegNASLib.nas.benchmark import job_seconds

    run = RunDir(tmp_path / "run")
    run.ensure_layout()
    events = [
        ("log", "00:00:00", "search started (pid 1)"),
        ("progress", "00:00:30", None),
        ("cancelled", "00:01:00", None),  # session 1: 60 s
        ("log", "00:05:00", "search resumed (pid 2)"),
        ("progress", "00:05:20", None),  # killed here: session 2 counts to its last event, 20 s
        ("log", "00:09:00", "search resumed (pid 3)"),
        ("done", "00:09:45", None),  # session 3: 45 s
    ]
    for kind, clock, message in events:
        run.append_event({"type": kind, "time": f"2026-01-01T{clock}.000+00:00", "message": message})
    assert job_seconds(run.path) == pytest.approx(125.0)
