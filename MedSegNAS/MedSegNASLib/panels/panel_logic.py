"""What the MedSegNAS panel does, without Qt: scene nodes in, jobs launched, nodes out.

The module file ``MedSegNAS.py`` only connects widgets to these functions and to the panel modules
beside this one, so everything is tested with the real MRML classes of the ``slicer-core`` wheel
(``Testing/test_medsegnas_logic.py``, ``Testing/test_panel_*.py``):

* **Segment** (here): :func:`segment_volume_node` runs a model in this process (scripts, tests);
  :func:`launch_segment_job` runs ``medsegnas segment`` as a background job and
  :func:`load_segment_result` turns its label map into the same segmentation node. The node is
  named ``"<input> - <model>"``, has the bundle's named, colored segments with their terminology
  (:mod:`.panel_terminology`), references the input volume, and replaces the previous result of
  the same input and model (found by node attributes).
* **Models** (here): :func:`model_tooltip`, :func:`model_display_name`;
  :func:`launch_model_import_job` and :func:`launch_model_download_job` run imports and downloads
  as background jobs (worker processes: a thread would barely run inside Slicer).
* **Search and train** (here): :func:`launch_training_job` (one process or one per GPU,
  :func:`training_argv`), with the dataset from a folder or exported from scene volumes and
  segmentations (:func:`.panel_dataset.export_scene_dataset`).
* **Jobs** (:mod:`.panel_jobs`, shared with SSLPretrain): :class:`JobFollower`, :func:`cancel_job`,
  :func:`resume_job`, :func:`live_runs`, re-exported here.
* **Runs** (:mod:`.panel_runs`): curves as plot chart nodes, details, Dice table, validation
  predictions, "Use this model".
* **Evaluate** (here): :func:`evaluate_segmentation_nodes` (Dice, HD95, NSD per segment into a table node).
* **Phantom data** (:func:`launch_phantom_job`, :func:`.panel_dataset.load_dataset_case`).

Only ``slicer`` (MRML classes) and ``vtk`` are imported at the top; the slicer bridge, data I/O,
torch and MONAI are imported by the functions that need them, so that Slicer starts quickly and
the panel opens even before torch is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import slicer

from ..atomic import write_json_atomic
from ..dependencies import SLICER_PACKAGES, packages_for
from ..errors import JobError, MedSegNASError
from ..jobs import RunDir, refresh_status
from .panel_jobs import (
    JobFollower,
    JobUpdate,
    cancel_job,
    format_eta,
    launch_job,
    live_runs,
    poll_job,
    progress_text,
    run_is_live,
    run_result,
    torchrun_entry,
    worker_environment,
    worker_python,
)
from .panel_jobs import resume_job as _resume_job
from .panel_terminology import apply_terminology

if TYPE_CHECKING:  # torch is imported only where a model runs
    from ..data.volume import LabelInfo, Volume
    from ..inference.engine import SegmentOptions
    from ..models.registry import ModelRecord

__all__ = [
    "JobFollower",
    "JobUpdate",
    "cancel_job",
    "catalog_names",
    "ensure_packages",
    "evaluate_segmentation_nodes",
    "find_previous_result",
    "format_eta",
    "install_torch_from_extension",
    "launch_phantom_job",
    "launch_segment_job",
    "launch_training_job",
    "live_runs",
    "load_segment_result",
    "missing_packages",
    "model_display_name",
    "model_table_rows",
    "model_tooltip",
    "poll_job",
    "progress_text",
    "resume_job",
    "run_is_live",
    "run_result",
    "scene_case_rows",
    "scene_cases",
    "launch_from_settings",
    "launch_model_download_job",
    "launch_model_import_job",
    "segment_argv",
    "segment_options",
    "segment_volume_node",
    "training_argv",
    "training_command",
    "worker_environment",
    "worker_python",
]

#: Node attributes that identify a segmentation made by the panel (re-running replaces it).
INPUT_ATTRIBUTE = "MedSegNAS.InputVolumeID"
MODEL_ATTRIBUTE = "MedSegNAS.Model"
#: Where a job launched by the panel keeps its inputs (and a segment job its result), in the run folder.
SEGMENT_INPUTS = Path("artifacts") / "inputs"
SEGMENT_OUTPUT = Path("artifacts") / "segmentation.seg.nrrd"
SCENE_INFO = "scene.json"
#: Job kinds the panel launches and follows.
SEGMENT, SEARCH, TRAIN, TUNE, PHANTOM = "segment", "search", "train", "tune", "phantom"
JOB_KINDS: tuple[str, ...] = (SEGMENT, SEARCH, TRAIN, TUNE, PHANTOM)
#: The kinds that train on a dataset (the panel's Search / Train / Tune buttons).
TRAINING_KINDS: tuple[str, ...] = (SEARCH, TRAIN, TUNE)
#: Python packages the panel's jobs need (import name -> pip requirement), from the one list in
#: :mod:`.dependencies`: every feature; torch comes from the PyTorch extension.
REQUIRED_PACKAGES: dict[str, str] = packages_for()
#: What a phantom job needs.
PHANTOM_PACKAGES: dict[str, str] = packages_for("phantom")


# --------------------------------------------------------------------------- environment and jobs


def missing_packages(packages: Iterable[str] = REQUIRED_PACKAGES) -> list[str]:
    """Import names of ``packages`` that this Python cannot import (nothing is imported)."""
    from ..dependencies import is_installed

    return [name for name in packages if not is_installed(name)]


def ensure_packages(
    packages: Mapping[str, str],
    *,
    confirm: Callable[[str], bool],
    install_torch: Callable[[], object],
    install_with_pip: Callable[[list[str]], object],
) -> bool:
    """Install the missing ``packages`` (import name -> pip requirement); False when ``confirm`` declines.

    ``confirm`` gets the missing import names, comma-separated. torch comes from ``install_torch``
    (in Slicer the PyTorch extension, which picks the build for the machine's GPU; it raises when it
    cannot), the others from one ``install_with_pip`` call. Packages that are present are never
    reinstalled or upgraded, so Slicer's own numpy and SimpleITK stay as they are.

    Raises:
        MedSegNASError: some packages are still missing after the installation.
    """
    missing = missing_packages(packages)
    if not missing:
        return True
    if not confirm(", ".join(missing)):
        return False
    shipped = [name for name in missing if name in SLICER_PACKAGES]
    if shipped:  # never installed over Slicer's own: a Slicer without them is broken
        raise MedSegNASError(
            f"{', '.join(shipped)} should come with Slicer but cannot be imported; reinstall Slicer"
        )
    if "torch" in missing:
        install_torch()
    others = [packages[name] for name in missing if name != "torch"]  # Slicer's own: refused above
    if others:
        install_with_pip(others)
    importlib.invalidate_caches()
    still_missing = missing_packages(packages)
    if still_missing:
        raise MedSegNASError(f"Could not install: {', '.join(still_missing)}")
    return True


def install_torch_from_extension() -> None:
    """torch from Slicer's PyTorch extension (``PyTorchUtils``), which picks the build for this
    machine's GPU: the ``install_torch`` of :func:`ensure_packages` inside Slicer.

    Raises:
        MedSegNASError: the extension is not installed, or it could not install torch.
    """
    try:
        import PyTorchUtils
    except ImportError:
        raise MedSegNASError(
            "PyTorch is missing: install the PyTorch extension (Extensions Manager)."
        ) from None
    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
        raise MedSegNASError("PyTorch could not be installed; try the PyTorch Utils module.")


def resume_job(
    run_dir: str | os.PathLike[str] | RunDir,
    *,
    processes: int | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RunDir:
    """Continue a stopped run of the panel's kinds from ``checkpoints/last.pt`` with the command line
    it was started with (and as many processes, unless ``processes`` says otherwise).

    Returns the run directory; its ``process`` is ``None`` when the run was already done.

    Raises:
        JobError: not a run directory, or ``job.json`` does not record the command.
    """
    return _resume_job(run_dir, kinds=JOB_KINDS, processes=processes, python=python, env=env)


def launch_phantom_job(
    dataset_folder: str | os.PathLike[str],
    runs_root: str | os.PathLike[str],
    *,
    cases: int = 4,
    unlabeled: int = 2,
    size: int = 64,
    python: str | None = None,
) -> RunDir:
    """Write a phantom dataset (``medsegnas phantom``) into ``dataset_folder`` as a background job;
    the ``done`` result holds the ``dataset`` (its ``dataset.json``)."""
    argv = [PHANTOM, Path(dataset_folder).expanduser().absolute(), "--cases", int(cases)]
    argv += ["--unlabeled", int(unlabeled), "--size", int(size)]
    return launch_job(argv, runs_root=runs_root, python=python)


# --------------------------------------------------------------------------- models


def model_display_name(record: ModelRecord) -> str:
    """The model's line in a model list; bundles that cannot run without trust are marked."""
    if record.needs_trust:
        return f"{record.id}  [untrusted: needs code]"
    return record.id + ("  [trusted]" if record.trusted else "")


def model_tooltip(record: ModelRecord) -> str:
    """Tooltip of a registered model: what it segments, from what, how big, where it came from, trust."""
    from ..models.registry import human_size

    labels = [str(item.get("name")) for item in record.labels if int(item.get("value", 0)) != 0]
    channels = (
        f"{record.input_channels} input channel(s)" if record.input_channels else "input channels unknown"
    )
    lines = [
        f"{record.name} {record.version}".strip(),
        f"Segments: {', '.join(labels) if labels else 'not described in its metadata'}",
        f"Modality: {record.modality or 'not stated'}; {channels}",
        f"Network: {record.network or 'unknown'}; size {human_size(record.size_bytes)}",
        f"Source: {record.source}",
    ]
    if record.description:
        lines.insert(1, record.description)
    if record.trusted:
        lines.append("Trusted: may run code from its configuration and weights.")
    elif record.problems:
        lines.append(
            f"UNTRUSTED: needs code to run ({record.problems[0]}); mark it trusted only if you trust its source."
        )
    else:
        lines.append("Safe: runs without executing code from the bundle.")
    return "\n".join(lines)


def model_table_rows(records: Sequence[ModelRecord]) -> list[tuple[list[str], str, str]]:
    """Rows of the models table: ``(cells [display name, segments, modality, trust], tooltip, model id)``."""
    rows = []
    for record in records:
        labels = ", ".join(str(item["name"]) for item in record.labels if item.get("value"))
        cells = [model_display_name(record), labels, record.modality or "", record.trust_state]
        rows.append((cells, model_tooltip(record), record.id))
    return rows


def _models_argv(home: str | os.PathLike[str] | None) -> list[str]:
    return ["models", *(["--home", Path(home).expanduser().absolute()] if home else [])]


def launch_model_import_job(
    source: str,
    runs_root: str | os.PathLike[str],
    *,
    trusted: bool = False,
    home: str | os.PathLike[str] | None = None,
    python: str | None = None,
) -> RunDir:
    """Import a bundle folder, archive or URL into the registry as a background job
    (``medsegnas models import SRC --rename``, kind ``model-import``); an id clash gets a new id.

    A worker process, not a thread: inside Slicer the GUI thread holds the GIL while idle, so a
    Python thread would barely advance. The ``done`` result holds ``model`` (the new id).
    """
    text = str(source).strip()
    if not text:
        raise MedSegNASError("give a bundle folder, archive or URL to import")
    if "://" not in text:  # a path: absolute, since the worker runs in the runs folder
        text = str(Path(text).expanduser().absolute())
    argv = [*_models_argv(home), "import", text, "--rename", *(["--trust"] if trusted else [])]
    return launch_job(argv, runs_root=runs_root, kind="model-import", python=python)


def launch_model_download_job(
    name: str,
    runs_root: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    python: str | None = None,
) -> RunDir:
    """Download a catalog bundle (checksum checked) into the registry as a background job
    (``medsegnas models download NAME``, kind ``model-download``; the catalog is
    ``$MEDSEGNAS_CATALOG`` or the shipped one). The ``done`` result holds ``model``."""
    if not str(name).strip():
        raise MedSegNASError("choose a bundle of the catalog to download")
    argv = [*_models_argv(home), "download", str(name).strip()]
    return launch_job(argv, runs_root=runs_root, kind="model-download", python=python)


# --------------------------------------------------------------------------- segment


def catalog_names() -> list[str]:
    """The names of the bundles in the model catalog (downloadable), sorted."""
    from ..models.registry import load_catalog

    return sorted(load_catalog())


def _looks_like_path(spec: str) -> bool:
    from ..models.registry import ARCHIVE_SUFFIXES

    return (
        "/" in spec
        or os.sep in spec
        or spec.startswith((".", "~"))
        or spec.lower().endswith(ARCHIVE_SUFFIXES)
    )


def model_key(model_spec: str | os.PathLike[str]) -> str:
    """What identifies a model in node attributes: a registry id, or the bundle's absolute path."""
    text = os.fspath(model_spec)
    return str(Path(text).expanduser().absolute()) if _looks_like_path(text) else text


def model_label(model_spec: str | os.PathLike[str]) -> str:
    """The model's name in a result's node name: the registry id, or the bundle folder/archive name."""
    from ..models.registry import ARCHIVE_SUFFIXES

    text = os.fspath(model_spec)
    if not _looks_like_path(text):
        return text
    name = Path(text.rstrip("/" + os.sep)).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def result_node_name(volume_node: Any, model_spec: str | os.PathLike[str]) -> str:
    return f"{volume_node.GetName()} - {model_label(model_spec)}"


def find_previous_result(volume_node: Any, model_spec: str | os.PathLike[str]) -> Any | None:
    """The segmentation node the panel made for this input and model, if it is still in the scene."""
    scene = volume_node.GetScene()
    if scene is None:
        return None
    key = model_key(model_spec)
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    found = None
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if (
            node.GetAttribute(INPUT_ATTRIBUTE) == volume_node.GetID()
            and node.GetAttribute(MODEL_ATTRIBUTE) == key
        ):
            found = node  # the newest one
    return found


def _show_result(
    labels: Volume | str | os.PathLike[str],
    table: Sequence[LabelInfo] | None,
    volume_node: Any,
    model_spec: str | os.PathLike[str],
    replace_existing: bool,
) -> Any:
    from .slicer_bridge import labelmap_to_segmentation_node

    previous = find_previous_result(volume_node, model_spec) if replace_existing else None
    node = labelmap_to_segmentation_node(
        labels,
        table,
        volume_node.GetScene(),
        reference_volume_node=volume_node,
        name=result_node_name(volume_node, model_spec),
        replace_node=previous,
        keep_empty_segments=True,  # every class of the model is listed, found or not
    )
    node.SetAttribute(INPUT_ATTRIBUTE, volume_node.GetID())
    node.SetAttribute(MODEL_ATTRIBUTE, model_key(model_spec))
    apply_terminology(node)  # SNOMED CT codes of the labels with common organ names
    return node


def _input_volume(volume_node: Any, extra_channel_nodes: Sequence[Any]) -> Volume:
    """The input volume node and the extra channels stacked as one ``(C, I, J, K)`` volume."""
    import numpy as np

    from ..data.volume import Volume
    from .slicer_bridge import volume_node_to_volume

    volume = volume_node_to_volume(volume_node)
    if not extra_channel_nodes:
        return volume
    arrays = [volume.array.astype(np.float32, copy=False)]
    for node in extra_channel_nodes:
        extra = volume_node_to_volume(node)
        if extra.spatial_shape != volume.spatial_shape or not np.allclose(
            extra.affine, volume.affine, atol=1e-3
        ):
            raise MedSegNASError(
                f"channel volume '{node.GetName()}' is not on the voxel grid of '{volume_node.GetName()}'; "
                "resample it onto that volume first (Resample Scalar/Vector/DWI Volume module)"
            )
        arrays.append(extra.array.astype(np.float32, copy=False))
    return Volume(np.concatenate(arrays), volume.affine, dict(volume.meta))


def segment_volume_node(
    volume_node: Any,
    model_spec: str | os.PathLike[str],
    *,
    extra_channel_nodes: Sequence[Any] = (),
    options: SegmentOptions | None = None,
    replace_existing: bool = True,
    progress: Any = None,
    trusted: bool = False,
    home: str | os.PathLike[str] | None = None,
) -> Any:
    """Segment a volume node with a model in this process and show the result as a segmentation node.

    Args:
        volume_node: the image (scalar volume node in a scene); its first channel for the model.
        model_spec: registry id, bundle folder or bundle archive.
        extra_channel_nodes: further input channels, in the model's order, on the same voxel grid.
        options: engine options (device, fast, tta, post-processing...); default: the bundle's.
        replace_existing: refill the panel's previous result of the same input and model
            instead of adding a new node.
        progress: :class:`~MedSegNASLib.inference.engine.Progress` receiving stages and windows.
        trusted: allow the bundle to run code (as ``--trust``).
        home: registry home (default ``$MEDSEGNAS_HOME`` or ``~/.medsegnas``).

    Returns:
        The ``vtkMRMLSegmentationNode`` named ``"<input> - <model>"``: one segment per label of the
        bundle (its names and colors), reference image geometry from the input volume.
    """
    from ..inference.engine import segment_volume
    from ..inference.model import load_resolved_model

    volume = _input_volume(volume_node, extra_channel_nodes)
    model = load_resolved_model(os.fspath(model_spec), trust=trusted, home=home)
    result = segment_volume(volume, model, options, progress)
    return _show_result(result.labels, model.labels, volume_node, model_spec, replace_existing)


def _options_dict(options: SegmentOptions | Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    return {name: getattr(options, name) for name in vars(options)}


def segment_argv(
    inputs: Sequence[str | os.PathLike[str]],
    model_spec: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: SegmentOptions | Mapping[str, Any] | None = None,
    *,
    trusted: bool = False,
) -> list[str]:
    """The ``medsegnas segment`` command line for ``options`` (a SegmentOptions or a dict of its fields;
    ``postprocess`` may be a PostprocessSpec or its text, e.g. ``"largest-component,fill-holes"``)."""
    values = _options_dict(options)
    argv = ["segment", *map(str, inputs), "--model", model_key(model_spec), "--output", str(output)]
    argv += ["--device", str(values.get("device") or "auto")]
    for flag, name in (("--fast", "fast"), ("--tta", "tta"), ("--trust", None)):
        if trusted if name is None else values.get(name):
            argv.append(flag)
    postprocess = values.get("postprocess")
    if postprocess is not None and not isinstance(postprocess, str):  # a PostprocessSpec
        steps = [f"min-size={postprocess.min_size}"] if postprocess.min_size else []
        steps += ["largest-component"] if postprocess.largest_component else []
        steps += ["fill-holes"] if postprocess.fill_holes else []
        postprocess = ",".join(steps)
    if postprocess:
        argv += ["--postprocess", str(postprocess)]
    if values.get("roi"):
        argv += ["--roi", *map(str, values["roi"])]
    for flag, name in (
        ("--overlap", "overlap"),
        ("--sw-batch-size", "sw_batch_size"),
        ("--threads", "threads"),
    ):
        if values.get(name) is not None:
            argv += [flag, str(values[name])]
    if values.get("crop") is False:
        argv.append("--no-crop")
    if values.get("amp") is not None:
        argv.append("--amp" if values["amp"] else "--no-amp")
    return argv


def launch_segment_job(
    volume_node: Any,
    model_spec: str | os.PathLike[str],
    runs_root: str | os.PathLike[str],
    options: SegmentOptions | Mapping[str, Any] | None = None,
    *,
    extra_channel_nodes: Sequence[Any] = (),
    trusted: bool = False,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RunDir:
    """Save the input volume(s) into a new run folder and start ``medsegnas segment`` on them.

    Layout: ``RUN/artifacts/inputs/channel_<n>.nrrd`` (with their geometry, linear transforms
    hardened), ``RUN/artifacts/inputs/scene.json`` (input node ID and name, model), result
    ``RUN/artifacts/segmentation.seg.nrrd``. Follow it with :class:`JobFollower`, then call
    :func:`load_segment_result`.

    Returns:
        The run directory, its ``process`` the worker.
    """
    from .slicer_bridge import export_volume_node

    run = RunDir.create(Path(runs_root).expanduser().absolute(), SEGMENT)
    inputs_dir = run.path / SEGMENT_INPUTS
    inputs_dir.mkdir(parents=True)
    inputs = [
        export_volume_node(node, inputs_dir / f"channel_{index}.nrrd")
        for index, node in enumerate([volume_node, *extra_channel_nodes])
    ]
    write_json_atomic(
        inputs_dir / SCENE_INFO,
        {
            "volume_node_id": volume_node.GetID(),
            "volume_name": volume_node.GetName(),
            "extra_channel_names": [node.GetName() for node in extra_channel_nodes],
            "model": model_key(model_spec),
        },
    )
    argv = segment_argv(inputs, model_spec, run.path / SEGMENT_OUTPUT, options, trusted=trusted)
    return launch_job(argv, run, python=python, env=env)


def load_segment_result(
    run_dir: str | os.PathLike[str] | RunDir,
    volume_node: Any | None = None,
    *,
    scene: Any | None = None,
    replace_existing: bool = True,
) -> Any:
    """The segmentation node of a finished segment job (launched by :func:`launch_segment_job`).

    Args:
        run_dir: the run folder.
        volume_node: the segmented volume node; default: the node recorded at launch if it is
            still in ``scene`` (same ID and name), else the saved input loaded as a new volume
            node (after Slicer was restarted).
        scene: where to look for / load the volume (default: the volume node's, else Slicer's).

    Raises:
        JobError: the job is not done (its state and error are in the message).
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    status = refresh_status(run)
    if status.get("state") != "done":
        raise JobError(
            f"segment job {run.path} is {status.get('state')}"
            + (f": {status['error']}" if status.get("error") else "")
            + "; there is no result to load"
        )
    info = json.loads((run.path / SEGMENT_INPUTS / SCENE_INFO).read_text(encoding="utf-8"))
    output = Path((status.get("result") or {}).get("output") or run.path / SEGMENT_OUTPUT)
    if volume_node is None:
        from ..data.io import read_volume
        from .slicer_bridge import _resolve_scene, volume_to_volume_node

        scene = _resolve_scene(scene)
        node = scene.GetNodeByID(info.get("volume_node_id") or "")
        if node is not None and node.GetName() == info.get("volume_name"):
            volume_node = node
        else:
            saved = read_volume(run.path / SEGMENT_INPUTS / "channel_0.nrrd")
            volume_node = volume_to_volume_node(saved, scene, name=info.get("volume_name") or "Input")
    return _show_result(output, None, volume_node, info["model"], replace_existing)


# --------------------------------------------------------------------------- search and train


def check_epochs(kind: str, preset: str, epochs: int | None) -> None:
    """Refuse, before a run is made, an Epochs setting that the worker would reject: a search needs
    more epochs than its preset's architecture warm-up (``tiny``: 6 of 12). 0 or None: the preset's.

    Raises:
        MedSegNASError: with the smallest valid value.
    """
    if not epochs or kind != SEARCH:
        return
    from ..nas.search import SEARCH_PRESETS

    schedule = SEARCH_PRESETS.get(preset, {})
    warmup = int(schedule.get("warmup_epochs", 0))
    if int(epochs) <= warmup:
        raise MedSegNASError(
            f"Epochs {epochs} is too few for a search with the '{preset}' preset: its first {warmup} epochs "
            f"are warm-up; set at least {warmup + 1}, or 0 for the preset's {schedule.get('epochs')}"
        )


def training_overrides(
    *,
    epochs: int | None = None,
    patch_size: int | Sequence[int] | None = None,
    memory_budget_mb: float | None = None,
) -> dict[str, Any]:
    """Config overrides for ``--config`` from the panel's options (0 or None: the preset's choice)."""
    overrides: dict[str, Any] = {}
    if epochs:
        overrides["epochs"] = int(epochs)
    if patch_size:
        size = [int(patch_size)] * 3 if isinstance(patch_size, (int, float)) else [int(s) for s in patch_size]
        overrides["patch_size"] = size
    if memory_budget_mb:
        overrides["memory_budget_mb"] = float(memory_budget_mb)
    return overrides


def training_argv(
    kind: str,
    dataset: str | os.PathLike[str],
    *,
    preset: str = "tiny",
    arch: str | os.PathLike[str] | None = None,
    network: str | None = None,
    device: str = "auto",
    config: str | os.PathLike[str] | None = None,
    trials: int = 8,
    budget_steps: int = 40,
    interactive: bool = False,
) -> list[str]:
    """The ``medsegnas search`` / ``train`` / ``tune`` command line (after the entry point, before
    ``--run-dir``), the same for one process and for every rank under torchrun.

    ``trials`` and ``budget_steps`` (optimisation steps per trial) are ``tune``'s
    ``--trials`` / ``--budget-steps``; the other kinds ignore them. ``interactive``: ``train
    --interactive`` (a click model for the Segment Editor effect); a search ignores it (its
    architecture is then trained interactively), ``tune`` refuses it.

    Raises:
        MedSegNASError: unknown kind, missing dataset, ``train`` or ``tune`` without exactly one
            of ``arch`` and ``network``, ``tune`` with fewer than 1 trial or step, or ``tune``
            with ``interactive``.
    """
    if kind not in TRAINING_KINDS:
        raise MedSegNASError(f"unknown job kind {kind!r}: the panel launches {', '.join(TRAINING_KINDS)}")
    if kind == TUNE and interactive:
        raise MedSegNASError(
            "Tune trains automatic models only; untick 'interactive', or Train an interactive model"
        )
    dataset = Path(dataset).expanduser().absolute()
    if not dataset.exists():
        raise MedSegNASError(f"dataset {dataset} does not exist; choose a dataset.json or its folder")
    argv: list[Any] = [kind, "--dataset", dataset, "--preset", preset, "--device", device]
    if kind in (TRAIN, TUNE):
        if (arch is None) == (network is None):
            raise MedSegNASError(f"{kind} needs either a searched architecture (arch) or a baseline network")
        if arch is not None:
            arch = Path(arch).expanduser().absolute()
            argv += ["--arch", arch / "artifacts" / "arch.json" if arch.is_dir() else arch]
        else:
            argv += ["--network", network]
    if kind == TUNE:
        if int(trials) < 1 or int(budget_steps) < 1:
            raise MedSegNASError(
                f"tune needs at least 1 trial of at least 1 step, not {trials} of {budget_steps}"
            )
        argv += ["--trials", int(trials), "--budget-steps", int(budget_steps)]
    if config is not None:
        argv += ["--config", Path(config).absolute()]
    if kind == TRAIN and interactive:
        argv.append("--interactive")
    return [str(token) for token in argv]


def training_command(
    kind: str,
    dataset: str | os.PathLike[str],
    *,
    gpus: int = 1,
    python: str | None = None,
    **options: Any,
) -> list[str]:
    """The whole worker command line of a search/train job without ``--run-dir``: the interpreter,
    ``-m torch.distributed.run --standalone --nproc_per_node <gpus>`` when ``gpus > 1``, then
    ``-m MedSegNASLib.cli`` and :func:`training_argv` (``options`` are its keywords)."""
    return [python or worker_python(), *torchrun_entry(gpus), *training_argv(kind, dataset, **options)]


def launch_training_job(
    kind: str,
    dataset: str | os.PathLike[str] | None,
    runs_root: str | os.PathLike[str],
    *,
    preset: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    arch: str | os.PathLike[str] | None = None,
    network: str | None = None,
    device: str = "auto",
    gpus: int = 1,
    scene_pairs: Sequence[tuple[Any, Any]] = (),
    dataset_name: str = "SceneDataset",
    dataset_modality: str = "CT",
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    trials: int = 8,
    budget_steps: int = 40,
    interactive: bool = False,
) -> RunDir:
    """Start ``medsegnas search``, ``train`` or ``tune`` on a dataset in a new run folder.

    Args:
        kind: ``"search"``, ``"train"`` or ``"tune"``.
        dataset: ``dataset.json`` or its folder (MSD layout); ``None`` with ``scene_pairs``.
        runs_root: where the run folder is made.
        preset: ``tiny``, ``small`` or ``full``.
        overrides: epochs, patch_size, memory_budget_mb, any search/train setting; written to
            ``RUN/artifacts/inputs/config.json`` and passed as ``--config``.
        arch, network: for ``train`` and ``tune``: the searched ``arch`` (``arch.json`` or its search run
            folder) or a baseline ``network`` (unet, segresnet, swinunetr).
        device: ``auto``, ``cuda`` or ``cpu``.
        gpus: processes, one per GPU (``torch.distributed.run``; rank 0 writes the run folder).
            More than one on ``cpu`` runs that many CPU processes (gloo).
        scene_pairs: ``(volume node, segmentation node)`` pairs of the scene, exported as an MSD
            dataset into ``RUN/artifacts/inputs/dataset`` (see
            :func:`.panel_dataset.export_scene_dataset`) and trained on.
        dataset_name, dataset_modality: the exported dataset's name and modality.
        trials, budget_steps: for ``tune``: Optuna trials and optimisation steps per trial.
        interactive: for ``train``: an interactive (click) model (``--interactive``).

    Resume a stopped run with :func:`resume_job` (same dataset, settings and number of processes).

    Raises:
        MedSegNASError: bad settings or scene data (no run folder is left behind).
    """
    if int(gpus) > 1 and device not in ("auto", "cuda", "cpu"):
        raise MedSegNASError(f"several processes run on CUDA GPUs or CPUs, not on {device!r}")
    if dataset is None and not scene_pairs:
        raise MedSegNASError("choose a dataset folder, or volumes and segmentations of the scene")
    if dataset is not None:  # refuse bad settings before a run folder exists
        training_argv(kind, dataset, preset=preset, arch=arch, network=network, device=device,
                      trials=trials, budget_steps=budget_steps, interactive=interactive)  # fmt: skip
    elif kind not in TRAINING_KINDS or (kind == TUNE and interactive):
        training_argv(kind, Path.cwd(), interactive=interactive)  # the same refusal, same words
    run = RunDir.create(Path(runs_root).expanduser().absolute(), kind)
    try:
        if scene_pairs:
            from .panel_dataset import export_scene_dataset

            dataset = export_scene_dataset(
                scene_pairs,
                run.path / SEGMENT_INPUTS / "dataset",
                name=dataset_name,
                modality=dataset_modality,
            )
        config = None
        if overrides:  # epochs, patch size... set in the panel
            (run.path / SEGMENT_INPUTS).mkdir(parents=True, exist_ok=True)
            config = write_json_atomic(run.path / SEGMENT_INPUTS / "config.json", dict(overrides))
        argv = training_argv(
            kind, dataset, preset=preset, arch=arch, network=network, device=device, config=config,
            trials=trials, budget_steps=budget_steps, interactive=interactive,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return launch_job(argv, run, processes=gpus, python=python, env=env)


# --------------------------------------------------------------------------- evaluate


def _segments(segmentation_node: Any) -> list[tuple[str, str, int | None]]:
    """(segment ID, name, stored label value or None) of every segment, in order."""
    import vtk

    from ..data.io import LABEL_VALUE_TAG

    segmentation = segmentation_node.GetSegmentation()
    found = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        tag = vtk.reference("")
        value = None
        if segment.GetTag(LABEL_VALUE_TAG, tag) and str(tag).strip().isdigit():
            value = int(str(tag))
        elif segment_id.startswith("label_") and segment_id[6:].isdigit():
            value = int(segment_id[6:])
        found.append((segment_id, segment.GetName(), value))
    return found


def match_segments(segmentation_node: Any, reference_node: Any) -> list[tuple[str, str | None, str]]:
    """Pairs (reference segment ID, segmentation segment ID or None, name), matched by segment name,
    then by stored label value; reference segments in order."""
    candidates = _segments(segmentation_node)
    used: set[str] = set()
    pairs = []
    for ref_id, ref_name, ref_value in _segments(reference_node):
        match = next((sid for sid, name, _ in candidates if name == ref_name and sid not in used), None)
        if match is None and ref_value is not None:
            match = next(
                (sid for sid, _, value in candidates if value == ref_value and sid not in used), None
            )
        if match is not None:
            used.add(match)
        pairs.append((ref_id, match, ref_name))
    return pairs


def _geometry_volume_node(reference_node: Any, other_node: Any) -> Any:
    """A volume node defining the grid to compare on: the volume the reference segmentation is
    referenced to, else the other's, else one made from the reference's own image geometry."""
    for node in (reference_node, other_node):
        volume = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
        if volume is not None and volume.IsA("vtkMRMLVolumeNode") and volume.GetImageData() is not None:
            return volume
    geometry = reference_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    image = slicer.vtkOrientedImageData()
    if not geometry or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False):
        raise MedSegNASError(
            f"reference segmentation '{reference_node.GetName()}' has no reference geometry; "
            "set its source geometry to a volume (Segment Editor) first"
        )
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    extent = image.GetExtent()
    plain = vtk.vtkImageData()
    plain.SetDimensions(extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    plain.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    volume = slicer.vtkMRMLScalarVolumeNode()  # temporary, never added to the scene
    origin_shift = [sum(matrix.GetElement(r, c) * extent[2 * c] for c in range(3)) for r in range(3)]
    for r in range(3):
        matrix.SetElement(r, 3, matrix.GetElement(r, 3) + origin_shift[r])
    volume.SetIJKToRASMatrix(matrix)
    volume.SetAndObserveImageData(plain)
    return volume


def evaluate_segmentation_nodes(
    segmentation_node: Any,
    reference_node: Any,
    scene: Any,
    *,
    tolerance_mm: float = 2.0,
    table_node: Any | None = None,
) -> Any:
    """Dice, HD95 (mm) and NSD of every reference segment into a table node.

    Segments are matched by name, then by stored label value (:func:`match_segments`); both
    segmentations are exported on one grid (the volume the reference is referenced to) with
    :func:`~MedSegNASLib.panels.slicer_bridge.segments_to_labelmap`, then scored by
    :func:`~MedSegNASLib.evaluation.metrics.label_metrics` (absent-class rules there: a missed
    segment scores Dice 0, HD95 inf). Where segments of one segmentation overlap, the later wins.

    Returns:
        The ``vtkMRMLTableNode`` ``"<segmentation> vs <reference>"``, one row per reference segment:
        ``segment``, ``matched`` (segment name in the evaluated segmentation, "" when none),
        ``dice``, ``hd95_mm``, ``nsd``, ``voxels_reference``, ``voxels_segmentation``, ``status``.
    """
    from ..data.volume import LabelInfo
    from ..evaluation.metrics import label_metrics
    from .slicer_bridge import metrics_to_table_node

    pairs, reference, evaluated = _paired_labelmaps(segmentation_node, reference_node)
    labels = [LabelInfo(number, name, (0.0, 0.0, 0.0)) for number, (_, _, name) in enumerate(pairs, start=1)]
    scores = label_metrics(
        evaluated.array[0], reference.array[0], labels, reference.spacing, tolerance_mm=tolerance_mm
    )
    segmentation = segmentation_node.GetSegmentation()
    rows = [
        {
            "segment": score.name,
            "matched": segmentation.GetSegment(match).GetName() if match else "",
            "dice": score.dice,
            "hd95_mm": score.hd95_mm,
            "nsd": score.nsd,
            "voxels_reference": score.voxels_ref,
            "voxels_segmentation": score.voxels_pred,
            "status": score.status,
        }
        for score, (_, match, _) in zip(scores, pairs, strict=True)
    ]
    name = f"{segmentation_node.GetName()} vs {reference_node.GetName()}"
    return metrics_to_table_node(rows, scene, name, replace_node=table_node)


def _paired_labelmaps(segmentation_node: Any, reference_node: Any) -> tuple[list, Any, Any]:
    """Matched segment pairs (:func:`match_segments`) and both segmentations as label maps on one
    grid, the pair number as label value: ``(pairs, reference, evaluated)``.

    Raises:
        MedSegNASError: the reference has no segments.
    """
    from .slicer_bridge import segments_to_labelmap

    pairs = match_segments(segmentation_node, reference_node)
    if not pairs:
        raise MedSegNASError(f"reference segmentation '{reference_node.GetName()}' has no segments")
    grid = _geometry_volume_node(reference_node, segmentation_node)
    reference = segments_to_labelmap(
        reference_node, grid, [(ref_id, number) for number, (ref_id, _, _) in enumerate(pairs, start=1)]
    )
    evaluated = segments_to_labelmap(
        segmentation_node,
        grid,
        [(match, number) for number, (_, match, _) in enumerate(pairs, start=1) if match is not None],
    )
    return pairs, reference, evaluated


#: Folder (in an evaluate run's artifacts) holding the scene's segmentations as label maps.
EVALUATE_INPUTS = "inputs/scene"


def launch_evaluate_nodes_job(
    segmentation_node: Any,
    reference_node: Any,
    runs_root: str | os.PathLike[str],
    *,
    tolerance_mm: float = 2.0,
    python: str | None = None,
) -> RunDir:
    """Score a segmentation node against a reference one as a background job (kind ``evaluate``).

    The GUI part is only what needs MRML: segments are matched (:func:`match_segments`) and both
    segmentations exported on one grid as uncompressed NRRD label maps (a one-case dataset in
    ``RUN/artifacts/inputs/scene``); the worker (``medsegnas evaluate --predictions``) imports
    torch and MONAI and computes the metrics, so Slicer's GUI never does. Read the finished run
    with :func:`evaluation_table_node`.

    Raises:
        MedSegNASError: the reference has no segments.
    """
    from ..data.io import write_volume

    pairs, reference, evaluated = _paired_labelmaps(segmentation_node, reference_node)
    root = Path(runs_root).expanduser().absolute()
    run = RunDir.create(root, "evaluate")
    folder = run.artifacts / EVALUATE_INPUTS
    write_volume(reference, folder / "case.nrrd", compress=False)
    write_volume(evaluated, folder / "predictions" / "case.nrrd", compress=False)
    segmentation = segmentation_node.GetSegmentation()
    write_json_atomic(
        folder / "dataset.json",
        {
            "name": "scene",
            "modality": {"0": "label"},
            "labels": {"0": "background", **{str(n): name for n, (_, _, name) in enumerate(pairs, start=1)}},
            "training": [{"image": "case.nrrd", "label": "case.nrrd"}],
        },
    )
    write_json_atomic(
        folder / "names.json",
        {
            "title": f"{segmentation_node.GetName()} vs {reference_node.GetName()}",
            "matched": [segmentation.GetSegment(match).GetName() if match else "" for _, match, _ in pairs],
        },
    )
    argv = [
        "evaluate", "--predictions", folder / "predictions", "--dataset", folder / "dataset.json",
        "--split", "all", "--tolerance", float(tolerance_mm),
    ]  # fmt: skip
    return launch_job(argv, run, kind="evaluate", python=python)


def evaluation_table_node(
    run_dir: str | os.PathLike[str] | RunDir, scene: Any, *, table_node: Any = None
) -> Any:
    """The table node of a finished :func:`launch_evaluate_nodes_job` run (columns as
    :func:`evaluate_segmentation_nodes`'); reads two small JSON files, imports no torch."""
    from ..evaluation.commands import JOB_REPORT_NAME
    from .slicer_bridge import metrics_to_table_node

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    names = json.loads((run.artifacts / EVALUATE_INPUTS / "names.json").read_text(encoding="utf-8"))
    report = json.loads((run.artifacts / JOB_REPORT_NAME).read_text(encoding="utf-8"))
    rows = [
        {
            "segment": row["name"],
            "matched": names["matched"][row["label"] - 1],
            "dice": float(row["dice"]),
            "hd95_mm": float(row["hd95_mm"]),
            "nsd": float(row["nsd"]),
            "voxels_reference": int(row["voxels_ref"]),
            "voxels_segmentation": int(row["voxels_pred"]),
            "status": row["status"],
        }
        for row in report["rows"]
    ]
    return metrics_to_table_node(rows, scene, names["title"], replace_node=table_node)


# --------------------------------------------------------------------------- the panel's settings


def segment_options(settings: Any) -> dict[str, Any]:
    """``medsegnas segment`` options from the panel's settings (``device``, ``fast``, ``tta``,
    ``largestComponent``, ``fillHoles``)."""
    steps = [("largest-component", settings.largestComponent), ("fill-holes", settings.fillHoles)]
    postprocess = ",".join(step for step, on in steps if on)
    return {
        "device": settings.device,
        "fast": settings.fast,
        "tta": settings.tta,
        "postprocess": postprocess or None,
    }


def launch_from_settings(
    kind: str,
    settings: Any,
    *,
    selected_run: str | os.PathLike[str] | None = None,
    scene_pairs: Sequence[tuple[Any, Any]] = (),
    python: str | None = None,
) -> RunDir:
    """Start the job of a panel button with the panel's settings (its parameter node).

    Args:
        kind: ``segment``, ``search``, ``train``, ``tune`` or ``phantom``.
        settings: the parameter node (``runsFolder``, ``inputVolume``, ``model``, ``datasetSource``,
            ``datasetPath``, ``sceneModality``, ``preset``, ``network``, ``epochs``, ``patchSize``,
            ``memoryBudget``, ``gpus``, ``device``, ``tuneTrials``, ``tuneBudgetSteps``, ``interactive``,
            ``phantom*``...).
        selected_run: the search run selected under Runs (``train``/``tune`` with network ``searched``).
        scene_pairs: checked ``(volume, segmentation)`` cases (dataset source ``scene``).
    """
    s, runs = settings, Path(settings.runsFolder).expanduser()
    if kind == SEGMENT:
        extra = [s.extraChannelVolume] if s.extraChannelVolume else []
        return launch_segment_job(
            s.inputVolume, s.model, runs, segment_options(s), extra_channel_nodes=extra, python=python
        )
    if kind == PHANTOM:
        return launch_phantom_job(
            s.phantomFolder,
            runs,
            cases=s.phantomCases,
            unlabeled=s.phantomUnlabeled,
            size=s.phantomSize,
            python=python,
        )
    interactive = bool(getattr(s, "interactive", False))
    if kind == TUNE and interactive:  # before the other settings: this is the one to change
        training_argv(kind, s.datasetPath, interactive=True)
    arch = network = None
    if kind in (TRAIN, TUNE) and s.network == "searched":
        if not selected_run:
            raise MedSegNASError(
                f"select a finished search run under Runs, or choose a baseline network to {kind}"
            )
        arch = selected_run
    elif kind in (TRAIN, TUNE):
        network = s.network
    check_epochs(kind, s.preset, s.epochs)
    if kind == TUNE and s.epochs:  # tune refuses epochs in --config: the budget sets them
        raise MedSegNASError(
            "Epochs does not apply to Tune: each trial trains Budget steps and the best configuration is "
            "retrained with the preset's schedule; set Epochs to 0 (preset)"
        )
    from_scene = s.datasetSource == "scene"
    if from_scene and len(scene_pairs) < 2:
        raise MedSegNASError("check at least 2 scene cases (a volume with its segmentation) to train on")
    return launch_training_job(
        kind,
        None if from_scene else s.datasetPath,
        runs,
        preset=s.preset,
        overrides=training_overrides(
            epochs=s.epochs, patch_size=s.patchSize, memory_budget_mb=s.memoryBudget
        ),
        arch=arch,
        network=network,
        device="auto" if s.device == "mps" else s.device,
        gpus=s.gpus,
        scene_pairs=scene_pairs if from_scene else (),
        dataset_modality=(s.sceneModality or "CT").strip(),
        python=python,
        trials=s.tuneTrials if kind == TUNE else 8,
        budget_steps=s.tuneBudgetSteps if kind == TUNE else 40,
        interactive=interactive,
    )


def scene_case_rows(scene: Any) -> list[tuple[list[str], str, tuple[str, str]]]:
    """The panel's table of scene cases (:func:`.panel_dataset.scene_segmentation_pairs`): per row the
    cells (segmentation, volume, segment names), the tooltip (volume name) and the
    ``(segmentation ID, volume ID)`` pair that :func:`scene_cases` takes back."""
    from .panel_dataset import scene_segmentation_pairs, segment_names

    return [
        (
            [segmentation.GetName(), volume.GetName(), ", ".join(segment_names(segmentation))],
            volume.GetName(),
            (segmentation.GetID(), volume.GetID()),
        )
        for volume, segmentation in scene_segmentation_pairs(scene)
    ]


def scene_cases(scene: Any, id_pairs: Iterable[Sequence[str]]) -> list[tuple[Any, Any]]:
    """``(volume node, segmentation node)`` of each ``(segmentation ID, volume ID)`` pair (the scene
    cases checked in the panel), leaving out pairs whose nodes are no longer in ``scene``."""
    nodes = [
        (scene.GetNodeByID(volume_id), scene.GetNodeByID(segmentation_id))
        for segmentation_id, volume_id in id_pairs
    ]
    return [
        (volume, segmentation)
        for volume, segmentation in nodes
        if volume is not None and segmentation is not None
    ]
