"""Write a trained network as a MONAI bundle that MONAI and ``medsegnas segment`` both run.

Layout written by :func:`export_bundle` (the model-zoo layout)::

    <out_dir>/
        configs/metadata.json    MONAI metadata (versions, task, network_data_format with the
                                 label names as ``outputs.pred.channel_def``) plus a ``medsegnas``
                                 section: labels with colors, the preprocessing spec, the arch code
        configs/inference.json   runs with ``python -m monai.bundle run --config_file
                                 configs/inference.json --dataset_dir DIR --output_dir OUT``
                                 (from the bundle folder, or with ``--bundle_root``)
        configs/arch.json        DiNTS only: the architecture code (plain lists)
        models/model.pt          the network's state dict (tensors only: loads with weights_only=True)
        docs/README.md           what the model segments, how it preprocesses, how to run it
        LICENSE                  when a license text is given

The inference config uses only MONAI components and the ``$`` expressions that
:mod:`.safe_expr` interprets without ``eval`` (``@bundle_root + ...``, ``torch.device(...)``,
``glob.glob``, ``numpy.array`` of literal lists), so an exported bundle opens as an untrusted
bundle; :func:`export_bundle` checks that with :func:`~.bundle.check_config` before writing.

The bundle is built in a temporary folder beside ``out_dir`` and renamed into place: a reader
sees the old bundle or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MedSegNASError

__all__ = [
    "DEFAULT_INFERER",
    "META_SCHEMA_URL",
    "export_bundle",
    "dints_network_def",
    "inference_config",
    "bundle_metadata",
]

#: The MONAI metadata schema published bundles declare (``monai.bundle verify_metadata`` fetches it).
META_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
#: Version of the ``medsegnas`` section of ``metadata.json``.
MEDSEGNAS_METADATA_VERSION = 1
#: Sliding-window settings written to ``inference.json`` unless the caller gives others
#: (as MONAI's spleen_ct_segmentation bundle).
DEFAULT_INFERER: dict[str, Any] = {"sw_batch_size": 4, "overlap": 0.5, "mode": "constant"}
#: Suffix of the label maps ``monai.bundle run`` writes: ``<case>_seg.nii.gz``.
OUTPUT_POSTFIX = "seg"


def dints_network_def(
    arch_code: Any, in_channels: int, num_classes: int, *, channel_mul: float = 1.0
) -> dict[str, Any]:
    """The ``network_def`` config of a retrained DiNTS architecture, self-contained.

    As in MONAI's ``pancreas_ct_dints_segmentation`` bundle: :class:`~monai.networks.nets.DiNTS`
    around a :class:`~monai.networks.nets.TopologyInstance`, but with the codes inline instead of
    a pickled search-code file. ``TopologyInstance`` calls ``torch.from_numpy`` on the codes, so
    they are written as ``"$numpy.array([[...]])"`` of literal lists: the one expression needed,
    which MONAI evaluates and :mod:`.safe_expr` interprets without ``eval``.

    Args:
        arch_code: a :class:`~MedSegNASLib.nas.decode.ArchCode` (or its ``to_dict()``).
        in_channels: input channels of the network.
        num_classes: output channels (background included).
        channel_mul: width multiplier (1.0 for retrained networks, as published).
    """
    from ..nas.decode import ArchCode

    code = arch_code if isinstance(arch_code, ArchCode) else ArchCode.from_dict(arch_code)
    space = code.search_space
    return {
        "_target_": "DiNTS",
        "dints_space": {
            "_target_": "TopologyInstance",
            "channel_mul": float(channel_mul),
            "num_blocks": space.num_blocks,
            "num_depths": space.num_depths,
            "spatial_dims": space.spatial_dims,
            "use_downsample": bool(space.use_downsample),
            "arch_code": [
                f"$numpy.array({json.dumps(code.arch_code_a.tolist())})",
                f"$numpy.array({json.dumps(code.arch_code_c.tolist())})",
            ],
        },
        "in_channels": int(in_channels),
        "num_classes": int(num_classes),
        "spatial_dims": space.spatial_dims,
        "use_downsample": bool(space.use_downsample),
        "node_a": code.node_a.tolist(),
    }


def _label_table(labels: Sequence[Any]) -> list[Any]:
    """Labels sorted by value, checked to be the output channels 0..C-1 (0 = background)."""
    from ..data.volume import LabelInfo

    table = sorted(
        (LabelInfo(int(lb.value), str(lb.name), tuple(lb.color)) for lb in labels), key=lambda x: x.value
    )
    if not table or table[0].value != 0:
        table.insert(0, LabelInfo(0, "background", (0.0, 0.0, 0.0)))
    values = [label.value for label in table]
    if values != list(range(len(values))):
        raise MedSegNASError(
            f"bundle labels must be the output channels 0..{len(values) - 1} (0 = background), got values {values}"
        )
    if len(table) < 2:
        raise MedSegNASError("a segmentation bundle needs at least one label besides the background")
    for label in table:
        if not label.name.strip() or any(ch in label.name for ch in "\r\n"):
            raise MedSegNASError(f"label {label.value} has an empty or multi-line name {label.name!r}")
        if len(label.color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in label.color):
            raise MedSegNASError(f"label '{label.name}' color {label.color} is not 3 values in [0, 1]")
    return table


def inference_config(
    network_def: Mapping[str, Any],
    preprocessing: Any,
    *,
    inferer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``configs/inference.json`` content: MONAI's standard evaluator workflow for this model.

    ``LoadImaged`` + the spec's :meth:`~MedSegNASLib.data.preprocessing.PreprocessingSpec.bundle_preprocessing`,
    a sliding-window inferer over ``patch_size`` windows, then softmax, ``Invertd`` back to the
    input image's grid (linear interpolation of the probabilities), argmax and ``SaveImaged``
    (``<output_dir>/<case>_seg.nii.gz``, uint8). ``dataset_dir`` holds the images (``*.nii``,
    ``*.nii.gz``); both it and ``output_dir`` are meant to be overridden on the command line.
    """
    sliding = {**DEFAULT_INFERER, **dict(inferer or {})}
    image_key = "image"
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "image_key": image_key,
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.uint8",
        "output_postfix": OUTPUT_POSTFIX,
        "separate_folder": False,
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*'))))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": copy.deepcopy(dict(network_def)),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": image_key, "image_only": True},
                *preprocessing.bundle_preprocessing(key=image_key),
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(preprocessing.patch_size),
            **sliding,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "@image_key",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_ext": "@output_ext",
                    "output_dtype": "@output_dtype",
                    "output_postfix": "@output_postfix",
                    "separate_folder": "@separate_folder",
                    "resample": False,
                },
            ],
        },
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": True,
        },
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
            "strict": True,
        },
        "initialize": ["$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def _versions() -> dict[str, str]:
    import monai
    import nibabel
    import numpy
    import torch

    return {
        "monai": monai.__version__,
        "torch": torch.__version__.split("+")[0],
        "numpy": numpy.__version__,
        "nibabel": nibabel.__version__,
    }


def bundle_metadata(
    *,
    labels: Sequence[Any],
    preprocessing: Any,
    name: str,
    version: str,
    description: str,
    authors: str | Sequence[str],
    copyright: str | None = None,
    task: str | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    arch_code: Mapping[str, Any] | None = None,
    network: str | None = None,
) -> dict[str, Any]:
    """The ``configs/metadata.json`` content (MONAI metadata schema + the ``medsegnas`` section)."""
    from ..jobs.rundir import to_jsonable

    table = _label_table(labels)
    versions = _versions()
    spec = preprocessing
    ct = spec.intensity.kind == "ct_window"
    modality = spec.channels[0] if spec.num_channels == 1 else "+".join(spec.channels)
    value_range = [spec.intensity.b_min, spec.intensity.b_max] if ct else []
    author_text = authors if isinstance(authors, str) else ", ".join(authors)
    extra = to_jsonable(dict(extra_metadata or {}))
    organs = ", ".join(label.name for label in table[1:])
    metadata: dict[str, Any] = {
        "schema": META_SCHEMA_URL,
        "version": version,
        "changelog": {version: "exported by MedSegNAS"},
        "name": name,
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {"nibabel": versions["nibabel"]},
        "task": task or f"Segmentation of {organs} in {modality} volumes",
        "description": description or f"{name}: segments {organs}.",
        "authors": author_text,
        "copyright": copyright or f"Copyright (c) {datetime.date.today().year} {author_text}",
        "data_type": "nibabel",
        "image_classes": f"{spec.num_channels} channel(s): {', '.join(spec.channels)}",
        "label_classes": "; ".join(f"{label.value}: {label.name}" for label in table),
        "pred_classes": "; ".join(f"{label.value}: {label.name}" for label in table),
        "intended_use": "Research only; not for clinical use",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield" if ct else "magnitude",
                    "modality": modality,
                    "num_channels": spec.num_channels,
                    "spatial_shape": list(spec.patch_size),
                    "dtype": "float32",
                    "value_range": value_range,
                    "is_patch_data": True,
                    "channel_def": {str(i): channel for i, channel in enumerate(spec.channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(table),
                    "spatial_shape": list(spec.patch_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {str(label.value): label.name for label in table},
                }
            },
        },
        "medsegnas": {
            "format_version": MEDSEGNAS_METADATA_VERSION,
            "labels": [
                {"value": label.value, "name": label.name, "color": [float(c) for c in label.color]}
                for label in table
            ],
            "preprocessing": to_jsonable(spec.to_dict()),
            **({"network": network} if network else {}),
            **({"arch_code": to_jsonable(dict(arch_code))} if arch_code is not None else {}),
            **extra,
        },
    }
    metrics = extra.get("metrics") if isinstance(extra, dict) else None
    if isinstance(metrics, dict):
        metadata["eval_metrics"] = metrics
    return metadata


def _readme(metadata: Mapping[str, Any], inference: Mapping[str, Any]) -> str:
    section = metadata["medsegnas"]
    spec = section["preprocessing"]
    intensity = spec["intensity"]
    if intensity["kind"] == "ct_window":
        norm = (
            f"CT window [{intensity['a_min']}, {intensity['a_max']}] HU scaled to "
            f"[{intensity['b_min']}, {intensity['b_max']}]"
        )
    else:
        norm = "z-score of the non-zero voxels of each channel"
    spacing = (
        "kept as is" if spec.get("spacing") is None else " x ".join(f"{s:g}" for s in spec["spacing"]) + " mm"
    )
    rows = "\n".join(
        f"| {label['value']} | {label['name']} | {' '.join(f'{c:.3f}' for c in label['color'])} |"
        for label in section["labels"]
    )
    inferer = inference["inferer"]
    lines = [
        f"# {metadata['name']} (version {metadata['version']})",
        "",
        str(metadata["description"]),
        "",
        f"Authors: {metadata['authors']}. {metadata['copyright']}. {metadata['intended_use']}.",
        "",
        "## Labels",
        "",
        "| value | name | color (RGB) |",
        "| --- | --- | --- |",
        rows,
        "",
        "## Preprocessing",
        "",
        f"- input channels: {', '.join(spec['channels'])}",
        f"- orientation: {spec['orientation']}",
        f"- voxel spacing: {spacing}",
        f"- intensity: {norm}",
        f"- sliding window: {' x '.join(str(p) for p in spec['patch_size'])} voxels, overlap "
        f"{inferer.get('overlap')}, {inferer.get('mode')} blending",
        "",
        "## Running it",
        "",
        "With MedSegNAS (any input format, output on the input's grid, named and colored segments):",
        "",
        "    medsegnas segment image.nii.gz --model path/to/this/bundle -o labels.seg.nrrd",
        "",
        "With MONAI alone (NIfTI images in DIR, label maps written to OUT as <case>_seg.nii.gz):",
        "",
        "    cd path/to/this/bundle",
        "    python -m monai.bundle run --config_file configs/inference.json --dataset_dir DIR --output_dir OUT",
        "",
        "The weights (`models/model.pt`) are a plain state dict: they load with "
        "`torch.load(..., weights_only=True)`.",
        "",
    ]
    if "arch_code" in section:
        lines[-1:-1] = ["The DiNTS architecture code is in `configs/arch.json`.", ""]
    return "\n".join(lines)


def _plain_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    if not isinstance(state_dict, Mapping) or not state_dict:
        raise MedSegNASError("export_bundle needs the network's state dict (a non-empty mapping of tensors)")
    plain = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise MedSegNASError(f"state dict entry '{key}' is a {type(value).__name__}, not a tensor")
        plain[str(key)] = value.detach().to("cpu").contiguous()
    if all(key.startswith("module.") for key in plain):  # saved from DistributedDataParallel
        plain = {key[len("module.") :]: value for key, value in plain.items()}
    return plain


def _check_network(
    config: dict[str, Any], state_dict: Mapping[str, Any], root: Path, num_classes: int
) -> None:
    """Build ``network_def`` as an untrusted bundle would be built and load the weights strictly."""
    from .bundle import SafeConfigParser, check_config
    from .registry import SEGMENT_CONFIG_IDS

    # the inference path is what must open untrusted; MONAI's own workflow items (dataset,
    # evaluator, checkpoint loader) are for `python -m monai.bundle run` and never built here
    problems = check_config(config, ids=[i for i in SEGMENT_CONFIG_IDS if i in config], bundle_root=root)
    if problems:
        raise MedSegNASError(f"the exported inference config would not open as a safe bundle: {problems[0]}")
    parser = SafeConfigParser(copy.deepcopy(config), bundle_root=root)
    try:
        network = parser.get_parsed_content("network_def")
    except MedSegNASError:
        raise
    except Exception as exc:
        raise MedSegNASError(f"network_def cannot be built: {type(exc).__name__}: {exc}") from None
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise MedSegNASError(f"the state dict does not fit network_def: {first}") from None
    declared = config["network_def"].get("out_channels", config["network_def"].get("num_classes"))
    if isinstance(declared, int) and declared != num_classes:
        raise MedSegNASError(
            f"network_def has {declared} output channels but {num_classes} labels are given (background included)"
        )


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``out_dir``, replacing an earlier bundle there."""
    old: Path | None = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    out_dir: str | os.PathLike[str],
    *,
    network_def: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    labels: Sequence[Any],
    preprocessing: Any,
    name: str,
    version: str = "0.1.0",
    description: str = "",
    authors: str | Sequence[str] = "MedSegNAS",
    copyright: str | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    arch_code: Any = None,
    inferer: Mapping[str, Any] | None = None,
    license_text: str | None = None,
) -> Path:
    """Write a network and everything needed to run it as a MONAI bundle folder.

    Args:
        out_dir: the bundle folder to create (or replace, if it holds a bundle already).
        network_def: MONAI config of the network, e.g. ``{"_target_": "UNet", "spatial_dims": 3,
            ...}``; for DiNTS use :func:`dints_network_def`. Only MONAI components.
        state_dict: the trained weights (``network.state_dict()``); must load with ``strict=True``.
        labels: :class:`~MedSegNASLib.data.volume.LabelInfo` of the output channels 0..C-1 (a
            missing background 0 is added).
        preprocessing: the :class:`~MedSegNASLib.data.preprocessing.PreprocessingSpec` the model was
            trained with (channels, orientation, spacing, intensity, patch size).
        name, version, description, authors, copyright: MONAI metadata fields.
        extra_metadata: more facts stored under ``metadata["medsegnas"]`` (e.g. ``{"metrics":
            {"val_dice": 0.91}, "run_id": ...}``; ``metrics`` also becomes ``eval_metrics``).
        arch_code: a DiNTS :class:`~MedSegNASLib.nas.decode.ArchCode` (or its dict): written to
            ``configs/arch.json`` and to the metadata.
        inferer: sliding-window settings (``overlap``, ``sw_batch_size``, ``mode``) instead of
            :data:`DEFAULT_INFERER`; the window is always ``preprocessing.patch_size``.
        license_text: written to ``LICENSE`` when given.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        MedSegNASError: inconsistent labels, a network_def that is not a safe MONAI config or
            that the weights do not fit, or a folder that exists and is not a bundle.
    """
    import torch

    from ..data.preprocessing import PreprocessingSpec

    out_dir = Path(out_dir).expanduser().absolute()
    if not isinstance(preprocessing, PreprocessingSpec):
        raise MedSegNASError(f"preprocessing must be a PreprocessingSpec, got {type(preprocessing).__name__}")
    if not isinstance(network_def, Mapping) or "_target_" not in network_def:
        raise MedSegNASError("network_def must be a MONAI config dict with a '_target_'")
    if out_dir.exists() and not (out_dir / "configs" / "metadata.json").is_file():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise MedSegNASError(
                f"{out_dir} exists and is not a bundle folder; choose a new folder for the bundle"
            )
    table = _label_table(labels)
    arch_dict = None
    if arch_code is not None:
        arch_dict = arch_code.to_dict() if hasattr(arch_code, "to_dict") else dict(arch_code)
    weights = _plain_state_dict(state_dict)
    config = inference_config(network_def, preprocessing, inferer=inferer)
    metadata = bundle_metadata(
        labels=table,
        preprocessing=preprocessing,
        name=name,
        version=version,
        description=description,
        authors=authors,
        copyright=copyright,
        extra_metadata=extra_metadata,
        arch_code=arch_dict,
        network=str(network_def["_target_"]),
    )

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as exc:
        raise MedSegNASError(
            f"cannot write the bundle into {out_dir.parent}: {exc.strerror or exc}"
        ) from None
    try:
        for sub in ("configs", "models", "docs"):
            (staging / sub).mkdir()
        _check_network(config, weights, staging, len(table))
        (staging / "configs" / "inference.json").write_text(
            json.dumps(config, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (staging / "configs" / "metadata.json").write_text(
            json.dumps(metadata, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        if arch_dict is not None:
            (staging / "configs" / "arch.json").write_text(
                json.dumps(arch_dict, indent=2, allow_nan=False) + "\n", encoding="utf-8"
            )
        torch.save(weights, staging / "models" / "model.pt")
        (staging / "docs" / "README.md").write_text(_readme(metadata, config), encoding="utf-8")
        if license_text:
            (staging / "LICENSE").write_text(license_text, encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; a bundle is shared like any result
        _replace_folder(staging, out_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise MedSegNASError(f"writing the bundle {out_dir} failed: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
