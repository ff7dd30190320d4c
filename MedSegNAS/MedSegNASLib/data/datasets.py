"""Datasets: reading MSD ``dataset.json`` files and MONAI / Auto3DSeg datalists, folds, validation.

Two JSON layouts are read into one :class:`Dataset`:

* **Medical Segmentation Decathlon** ``dataset.json``: ``modality`` ``{"0": "CT"}``, ``labels``
  ``{"0": "background", "1": "liver"}`` (value -> name; the nnU-Net v2 form name -> value is
  accepted too), ``training`` ``[{"image", "label"}]`` and ``test`` ``[path]``. MedSegNAS
  adds two optional keys: ``unlabeled`` ``[path]`` (images for self-supervised pretraining)
  and ``label_colors`` ``{"1": [r, g, b]}`` (0-255 integers; floats in [0, 1] work too).
* **MONAI / Auto3DSeg datalist**: ``training`` ``[{"image", "label", "fold"?}]``,
  ``validation`` and ``testing`` lists; ``image`` may be a list of channel files. Label names
  are not part of a datalist; they may be given with the same ``labels`` key as MSD (or a
  ``class_names`` list for values 1..n).

Relative paths are resolved against ``dataroot`` (an argument or a ``"dataroot"`` key in the
JSON) or else the JSON file's folder. Loading only parses the JSON; :func:`validate_dataset`
opens the files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, MedSegNASError
from .volume import LabelInfo

#: Display colors (0-255 RGB) for common structures, matched against label names
#: (Slicer GenericAnatomyColors where it has the structure).
KNOWN_STRUCTURE_COLORS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "kidney": (185, 102, 83),
    "pancreas": (249, 180, 111),
    "stomach": (216, 132, 105),
    "gallbladder": (139, 150, 98),
    "aorta": (224, 97, 76),
    "vena cava": (0, 151, 206),
    "esophagus": (211, 171, 143),
    "adrenal": (244, 217, 154),
    "duodenum": (255, 253, 229),
    "bladder": (222, 154, 132),
    "lung": (197, 165, 145),
    "heart": (206, 110, 84),
    "bone": (241, 214, 145),
    "vertebra": (241, 214, 145),
    "prostate": (230, 158, 140),
    "tumor": (144, 238, 144),
    "tumour": (144, 238, 144),
    "cancer": (144, 238, 144),
    "lesion": (144, 238, 144),
    "cyst": (220, 245, 20),
}
#: Names of findings: matched before organs, so "liver tumor" gets the tumor color.
_FINDINGS = ("tumor", "tumour", "cancer", "lesion", "cyst")

#: Fallback colors (0-255 RGB) for labels with an unknown name, used in turn: saturated hues
#: (matplotlib's tab10 and two of its tints) that no known structure above uses.
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
)

#: Keys only an MSD (or nnU-Net) dataset.json has; a datalist may carry "labels" too.
_MSD_KEYS = ("modality", "tensorImageSize", "numTraining", "numTest", "channel_names")
#: Image file endings, longest first, stripped to name a case.
_IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class DatasetCase:
    """One case: its channel image files, optional label file and optional fold.

    Attributes:
        images: one path per channel, or a single (possibly multi-channel) file.
        label: label map file, or ``None`` (test or unlabelled images).
        fold: cross-validation fold given by the datalist, or ``None``.
    """

    images: tuple[Path, ...]
    label: Path | None = None
    fold: int | None = None

    @property
    def name(self) -> str:
        """Case name: the first image's file name without its image suffix."""
        file_name = self.images[0].name
        for suffix in _IMAGE_SUFFIXES:
            if file_name.endswith(suffix):
                return file_name[: -len(suffix)]
        return self.images[0].stem

    def files(self) -> list[Path]:
        return [*self.images, *([self.label] if self.label is not None else [])]


@dataclass
class Dataset:
    """A dataset description read by :func:`load_dataset` (no image has been opened).

    Attributes:
        path: the JSON file.
        root: folder against which relative paths were resolved.
        format: ``"msd"`` or ``"datalist"``.
        name, description: from the JSON (``name`` defaults to the folder name).
        modalities: one name per input channel (``["CT"]``).
        labels: label table, background included, sorted by value; empty when the JSON
            declares no label names (a plain datalist).
        cases: training cases (with labels, except in pretraining datalists).
        validation: explicit validation cases (datalist ``validation``), usually empty.
        test: test images (MSD ``test``, datalist ``testing``).
        unlabeled: images without labels for self-supervised pretraining.
    """

    path: Path
    root: Path
    format: str
    name: str
    description: str
    modalities: list[str]
    labels: list[LabelInfo]
    cases: list[DatasetCase] = field(default_factory=list)
    validation: list[DatasetCase] = field(default_factory=list)
    test: list[DatasetCase] = field(default_factory=list)
    unlabeled: list[DatasetCase] = field(default_factory=list)

    @property
    def num_channels(self) -> int:
        return len(self.modalities)

    @property
    def labels_declared(self) -> bool:
        return bool(self.labels)

    @property
    def label_values(self) -> list[int]:
        return [info.value for info in self.labels]

    @property
    def foreground_labels(self) -> list[LabelInfo]:
        return [info for info in self.labels if info.value != 0]

    def groups(self) -> list[tuple[str, list[DatasetCase]]]:
        """``(role, cases)`` for every role, in a fixed order."""
        return [
            ("training", self.cases),
            ("validation", self.validation),
            ("test", self.test),
            ("unlabeled", self.unlabeled),
        ]

    def display_path(self, path: Path) -> str:
        """``path`` relative to the dataset root when it is inside it (shorter messages)."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def label_color(name: str, value: int) -> tuple[float, float, float]:
    """A display color (RGB in [0, 1]) for a label: anatomical when the name is known."""
    words = name.lower().replace("_", " ").replace("-", " ")
    organs = sorted(set(KNOWN_STRUCTURE_COLORS) - set(_FINDINGS), key=len, reverse=True)
    for structure in (*_FINDINGS, *organs):
        if structure in words:
            return tuple(c / 255.0 for c in KNOWN_STRUCTURE_COLORS[structure])  # type: ignore[return-value]
    if value == 0:
        return (0.0, 0.0, 0.0)
    return tuple(c / 255.0 for c in DEFAULT_PALETTE[(value - 1) % len(DEFAULT_PALETTE)])  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix the file or regenerate it"
        ) from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path} must hold a JSON object with a 'training' list, not a {type(data).__name__}"
        )
    return data


def _parse_labels(raw: Any, problems: list[str]) -> dict[int, str]:
    """MSD ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}`` -> ``{value: name}``."""
    if not isinstance(raw, dict):
        problems.append(
            f'\'labels\' must be an object such as {{"0": "background", "1": "liver"}}, got {raw!r}'
        )
        return {}
    table: dict[int, str] = {}
    for key, item in raw.items():
        if isinstance(key, str) and key.strip().lstrip("-").isdigit() and isinstance(item, str):
            value, name = int(key), item
        elif isinstance(item, int) and not isinstance(item, bool):
            value, name = item, str(key)
        else:
            problems.append(
                f"'labels' entry {key!r}: {item!r} is neither value -> name ('\"1\": \"liver\"') "
                "nor name -> value ('\"liver\": 1'); region labels (lists) are not supported"
            )
            continue
        if value < 0 or value > 65535:
            problems.append(f"'labels' value {value} ({name!r}) must be between 0 and 65535")
            continue
        if value in table:
            problems.append(f"'labels' declares value {value} twice ({table[value]!r} and {name!r})")
            continue
        table[value] = name
    return table


def _parse_colors(raw: Any, problems: list[str]) -> dict[int, tuple[float, float, float]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"'label_colors' must be an object {{\"1\": [r, g, b]}}, got {raw!r}")
        return {}
    colors: dict[int, tuple[float, float, float]] = {}
    for key, rgb in raw.items():
        ok_key = isinstance(key, str) and key.strip().isdigit()
        ok_rgb = (
            isinstance(rgb, list | tuple)
            and len(rgb) == 3
            and all(isinstance(c, int | float) and not isinstance(c, bool) for c in rgb)
        )
        if not (ok_key and ok_rgb):
            problems.append(f"'label_colors' entry {key!r}: {rgb!r} is not 'value': [r, g, b]")
            continue
        integers = all(isinstance(c, int) for c in rgb)
        scale = 255.0 if integers or max(rgb) > 1.0 else 1.0
        if min(rgb) < 0 or max(rgb) > scale:
            problems.append(f"'label_colors' entry {key!r}: {rgb!r} is outside 0-255 (or 0-1)")
            continue
        colors[int(key)] = tuple(float(c) / scale for c in rgb)  # type: ignore[assignment]
    return colors


def _parse_modalities(raw: Any, problems: list[str]) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(m, str) for m in raw):
        return list(raw)
    if isinstance(raw, dict):
        try:
            keys = sorted(raw, key=int)
        except (TypeError, ValueError):
            problems.append(
                f'\'modality\' keys must be channel numbers, as in {{"0": "CT"}}; got {list(raw)}'
            )
            return None
        if [int(k) for k in keys] != list(range(len(keys))):
            problems.append(f"'modality' channels must be numbered 0..{len(keys) - 1}, got {keys}")
            return None
        return [str(raw[k]) for k in keys]
    problems.append(f'\'modality\' must be an object such as {{"0": "CT"}}, got {raw!r}')
    return None


class _CaseParser:
    """Turns JSON entries into :class:`DatasetCase` objects, collecting every problem."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.root = root
        self.problems = problems

    def path(self, value: Any, where: str) -> Path | None:
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{where} must be a file path, got {value!r}")
            return None
        path = Path(os.path.expanduser(value.strip()))
        return Path(os.path.normpath(path if path.is_absolute() else self.root / path))

    def cases(self, raw: Any, key: str, *, require_label: bool) -> list[DatasetCase]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problems.append(f"'{key}' must be a list, got {type(raw).__name__}")
            return []
        cases = []
        for index, entry in enumerate(raw):
            case = self.case(entry, f"{key}[{index}]", require_label=require_label)
            if case is not None:
                cases.append(case)
        return cases

    def case(self, entry: Any, where: str, *, require_label: bool) -> DatasetCase | None:
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict):
            self.problems.append(f'{where} must be an object {{"image": ..., "label": ...}} or a path')
            return None
        if "image" not in entry:
            self.problems.append(f"{where} has no 'image'")
            return None
        raw_images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        if not raw_images:
            self.problems.append(f"{where} has an empty 'image' list")
            return None
        images = [self.path(item, f"{where}.image") for item in raw_images]
        label = None
        if entry.get("label") is not None:
            label = self.path(entry["label"], f"{where}.label")
        elif require_label:
            self.problems.append(f"{where} has no 'label' (every MSD training case needs one)")
        fold = entry.get("fold")
        if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int) or fold < 0):
            self.problems.append(f"{where} has fold {fold!r}; folds are integers >= 0")
            fold = None
        if any(image is None for image in images):
            return None
        return DatasetCase(tuple(images), label, fold)  # type: ignore[arg-type]


def load_dataset(path: str | os.PathLike, *, dataroot: str | os.PathLike | None = None) -> Dataset:
    """Read an MSD ``dataset.json`` or a MONAI / Auto3DSeg datalist.

    Args:
        path: the JSON file, or a folder containing ``dataset.json``.
        dataroot: folder that relative paths are relative to. Default: the JSON's
            ``"dataroot"`` key if any (itself relative to the JSON's folder), else the JSON's folder.

    Raises:
        DatasetError: the file is missing, is not valid JSON, lacks required keys or has
            malformed entries; the message lists every problem found.
    """
    json_path = Path(path).expanduser()
    if json_path.is_dir():
        json_path = json_path / "dataset.json"
    data = _read_json(json_path)
    problems: list[str] = []

    is_msd = any(key in data for key in _MSD_KEYS)
    if not is_msd and not any(key in data for key in ("training", "validation", "testing")):
        raise DatasetError(
            f"{json_path} is neither an MSD dataset.json nor a MONAI datalist: it has none of the keys "
            f"'training', 'validation', 'testing' (found: {', '.join(sorted(data)) or 'none'})"
        )
    if is_msd:
        missing = [key for key in ("training", "labels") if key not in data]
        if "modality" not in data and "channel_names" not in data:
            missing.append("modality")
        if missing:
            hint = ""
            if "training" in missing and "channel_names" in data:
                hint = " (nnU-Net v2 datasets without a 'training' list are not supported: add one)"
            raise DatasetError(
                f"{json_path} lacks required MSD key(s) {', '.join(repr(k) for k in missing)}{hint}"
            )

    folder = json_path.parent
    root_value = dataroot if dataroot is not None else data.get("dataroot")
    if root_value is not None and not isinstance(root_value, str | os.PathLike):
        problems.append(f"'dataroot' must be a folder path, got {root_value!r}")
        root_value = None
    if root_value is None:
        root = folder
    else:
        # A relative dataroot is relative to the JSON's folder (not to the working directory).
        root = Path(os.path.expanduser(root_value))
        root = root if root.is_absolute() else folder / root
    root = Path(os.path.normpath(root))

    label_names: dict[int, str] = {}
    if "labels" in data:
        label_names = _parse_labels(data["labels"], problems)
    elif isinstance(data.get("class_names"), list) and all(isinstance(n, str) for n in data["class_names"]):
        label_names = {0: "background", **{i + 1: n for i, n in enumerate(data["class_names"])}}
    colors = _parse_colors(data.get("label_colors"), problems)
    if label_names and 0 not in label_names:
        label_names[0] = "background"
    labels = [
        LabelInfo(value, name, colors.get(value) or label_color(name, value))
        for value, name in sorted(label_names.items())
    ]

    parser = _CaseParser(root, problems)
    cases = parser.cases(data.get("training"), "training", require_label=is_msd)
    validation = parser.cases(data.get("validation"), "validation", require_label=False)
    test = parser.cases(
        data.get("test", data.get("testing")), "test" if "test" in data else "testing", require_label=False
    )
    unlabeled = parser.cases(data.get("unlabeled"), "unlabeled", require_label=False)

    modalities = _parse_modalities(data.get("modality", data.get("channel_names")), problems)
    if modalities is None:
        first = next((c for c in [*cases, *validation, *test, *unlabeled]), None)
        modalities = ["unknown"] * (len(first.images) if first is not None else 1)

    if problems:
        raise _problems_error(f"{json_path} is not a valid dataset description", problems)
    name = data.get("name") if isinstance(data.get("name"), str) else folder.name
    description = data.get("description") if isinstance(data.get("description"), str) else ""
    return Dataset(
        path=json_path,
        root=root,
        format="msd" if is_msd else "datalist",
        name=name,
        description=description,
        modalities=modalities,
        labels=labels,
        cases=cases,
        validation=validation,
        test=test,
        unlabeled=unlabeled,
    )


def _problems_error(headline: str, problems: Sequence[str]) -> DatasetError:
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    error = DatasetError(f"{headline} ({count}):\n" + "\n".join(f"  - {p}" for p in problems))
    error.problems = list(problems)  # type: ignore[attr-defined]
    return error


# --------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------


def split_folds(cases: Sequence[DatasetCase], n_folds: int = 5, seed: int = 0) -> list[list[DatasetCase]]:
    """Assign cases to ``n_folds`` disjoint folds, deterministically.

    Cases with an explicit ``fold`` stay in it; the others are shuffled with ``seed`` and each
    goes to the currently smallest fold, so fold sizes differ by at most one where possible.
    Within a fold, cases keep their listed order.

    Returns:
        ``n_folds`` lists; ``folds[k]`` is the validation set of fold ``k``.
    """
    if int(n_folds) != n_folds or n_folds < 2:
        raise DatasetError(f"the number of folds must be an integer >= 2, got {n_folds!r}")
    n_folds = int(n_folds)
    assignment: list[int | None] = [case.fold for case in cases]
    for case in cases:
        if case.fold is not None and case.fold >= n_folds:
            raise DatasetError(
                f"case '{case.name}' ({case.images[0]}) is in fold {case.fold}, but only {n_folds} folds "
                f"(0..{n_folds - 1}) were asked for; use at least {case.fold + 1} folds"
            )
    sizes = [0] * n_folds
    for fold in assignment:
        if fold is not None:
            sizes[fold] += 1
    free = [index for index, fold in enumerate(assignment) if fold is None]
    for index in np.random.default_rng(int(seed)).permutation(len(free)):
        smallest = int(np.argmin(sizes))
        assignment[free[index]] = smallest
        sizes[smallest] += 1
    return [[case for case, fold in zip(cases, assignment, strict=True) if fold == k] for k in range(n_folds)]


def train_val_split(
    dataset: Dataset, fold: int = 0, n_folds: int = 5, seed: int = 0
) -> tuple[list[DatasetCase], list[DatasetCase]]:
    """Training and validation cases of one fold.

    An explicit ``validation`` list in the datalist wins (then ``fold`` is not used); otherwise
    :func:`split_folds` splits the labelled training cases and fold ``fold`` validates.
    """
    labelled = [case for case in dataset.cases if case.label is not None]
    if dataset.validation:
        return labelled, list(dataset.validation)
    if len(labelled) < 2:
        raise DatasetError(
            f"{dataset.path} has {len(labelled)} labelled training case(s); at least 2 are needed to "
            "split training and validation data"
        )
    if int(fold) != fold or not 0 <= fold < n_folds:
        raise DatasetError(f"fold must be between 0 and {n_folds - 1}, got {fold!r}")
    folds = split_folds(labelled, n_folds=n_folds, seed=seed)
    if not folds[fold]:
        raise DatasetError(
            f"fold {fold} has no cases: {dataset.path} has {len(labelled)} labelled cases for {n_folds} folds; "
            f"use at most {len(labelled)} folds"
        )
    validation = folds[fold]
    held_out = {id(case) for case in validation}
    return [case for case in labelled if id(case) not in held_out], validation


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found.

    Attributes:
        dataset: the dataset checked.
        errors: problems that make the dataset unusable, each naming its file.
        warnings: problems worth knowing that do not stop training.
        checked_cases: number of training/validation cases whose files were opened.
        shapes: spatial shape ``(I, J, K)`` of each checked training/validation image.
        spacings: voxel spacing (mm) of each checked training/validation image.
        label_counts: label value -> number of checked label files that contain it.
    """

    dataset: Dataset
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_cases: int = 0
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    spacings: list[tuple[float, float, float]] = field(default_factory=list)
    label_counts: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self) -> None:
        if self.errors:
            raise _problems_error(f"dataset {self.dataset.path} is not usable", self.errors)

    def summary_lines(self) -> list[str]:
        """A human summary: counts, labels, shapes and spacing ranges, then the problems."""
        ds = self.dataset
        lines = [
            f"dataset: {ds.name} ({ds.path}, {'MSD dataset.json' if ds.format == 'msd' else 'datalist'})",
            f"cases: {len(ds.cases)} training ({sum(c.label is not None for c in ds.cases)} labelled), "
            f"{len(ds.validation)} validation, {len(ds.test)} test, {len(ds.unlabeled)} unlabeled",
            "channels: " + ", ".join(f"{i} {m}" for i, m in enumerate(ds.modalities)),
            "labels: " + (", ".join(f"{i.value} {i.name}" for i in ds.labels) or "not declared"),
        ]
        if self.shapes:
            shapes = np.array(self.shapes)
            lo, hi = shapes.min(axis=0), shapes.max(axis=0)
            lines.append(f"shapes: {'x'.join(map(str, lo))} .. {'x'.join(map(str, hi))} voxels")
            spacings = np.array(self.spacings)
            ranges = [
                f"{lo:.3g}-{hi:.3g}" if hi - lo > 1e-3 else f"{lo:.3g}"
                for lo, hi in zip(spacings.min(axis=0), spacings.max(axis=0), strict=True)
            ]
            lines.append(f"spacing (mm): {' x '.join(ranges)}")
        if self.label_counts:
            lines.append(
                "label values found (files): "
                + ", ".join(f"{value} ({count})" for value, count in sorted(self.label_counts.items()))
            )
        lines.append(f"checked: {self.checked_cases} training/validation case(s)")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        lines.append("OK" if self.ok else f"{len(self.errors)} error(s)")
        return lines


def _same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    # NIfTI stores the affine as float32: allow that rounding, nothing a resampler would notice.
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-3))


def _format_values(values: Iterable[int]) -> str:
    return ", ".join(str(int(v)) for v in sorted(values))


def validate_dataset(
    dataset: Dataset, *, check_labels: bool = True, max_cases: int | None = None, raise_on_error: bool = True
) -> ValidationReport:
    """Check that a dataset's files exist, share their grids and hold the declared labels.

    Every problem is collected before anything is raised, so one run shows them all. Checks:
    no or only one training case; missing files (every role); images, channel files and label
    maps not on the same grid (shape or affine, from the headers); fewer or more channel files
    than modalities; label values not declared in the label table (label files are read);
    declared labels never present (warning).

    Args:
        dataset: from :func:`load_dataset`.
        check_labels: read label maps to check their values (slower: whole files are read).
        max_cases: open the files of at most this many cases per role (all files are still
            checked for existence); ``None`` checks everything.
        raise_on_error: raise when errors were found (else return them in the report).

    Raises:
        DatasetError: when errors were found and ``raise_on_error``; its message lists them all.
    """
    from .io import read_geometry, read_volume

    report = ValidationReport(dataset)
    errors, warnings = report.errors, report.warnings
    show = dataset.display_path

    if not dataset.cases:
        errors.append(f"{dataset.path.name} lists no training cases")
    elif len(dataset.cases) == 1 and not dataset.validation:
        warnings.append("only one training case: training and validation data cannot be split")
    unlabelled_training = [c for c in dataset.cases if c.label is None]
    if unlabelled_training and len(unlabelled_training) < len(dataset.cases):
        warnings.append(
            f"{len(unlabelled_training)} training case(s) have no label, e.g. {show(unlabelled_training[0].images[0])}"
        )

    seen: dict[Path, str] = {}
    missing: set[Path] = set()
    for role, cases in dataset.groups():
        for case in cases:
            for path in case.files():
                if path in seen:
                    warnings.append(f"{show(path)} is listed twice ({seen[path]} and {role})")
                seen.setdefault(path, role)
                if path not in missing and not path.is_file():
                    missing.add(path)
                    what = "label" if path == case.label else "image"
                    errors.append(f"{role} case '{case.name}': {what} file not found: {show(path)}")

    declared = set(dataset.label_values)
    found_values: set[int] = set()
    labels_read = 0
    for role, cases in dataset.groups():
        limit = len(cases) if max_cases is None else min(len(cases), max_cases)
        for case in cases[:limit]:
            if any(path in missing for path in case.files()):
                continue
            # An MSD multi-modal case is one 4D file whose 4th axis holds the channels.
            packed_channels = len(case.images) == 1 and dataset.num_channels > 1
            try:
                grids = [
                    (path, *read_geometry(path, fourth_axis_channels=packed_channels)) for path in case.images
                ]
            except MedSegNASError as exc:
                errors.append(f"{role} case '{case.name}': {exc}")
                continue
            ref_path, ref_shape, ref_affine = grids[0]
            for path, shape, affine in grids[1:]:
                if tuple(shape) != tuple(ref_shape) or not _same_affine(affine, ref_affine):
                    errors.append(
                        f"{role} case '{case.name}': channel file {show(path)} is not on the grid of "
                        f"{show(ref_path)} ({_grid_difference(shape, affine, ref_shape, ref_affine)})"
                    )
            channels = len(case.images)
            if packed_channels:
                try:
                    channels = read_volume(ref_path, fourth_axis_channels=True).num_channels
                except MedSegNASError as exc:
                    errors.append(f"{role} case '{case.name}': {exc}")
                    continue
            if channels != dataset.num_channels:
                errors.append(
                    f"{role} case '{case.name}': {channels} image channel(s) ({show(ref_path)}) but the dataset "
                    f"declares {dataset.num_channels} modalities ({', '.join(dataset.modalities)})"
                )
            if role in ("training", "validation"):
                report.checked_cases += 1
                report.shapes.append(tuple(int(s) for s in ref_shape))  # type: ignore[arg-type]
                report.spacings.append(tuple(float(s) for s in np.linalg.norm(ref_affine[:3, :3], axis=0)))  # type: ignore[arg-type]
            if case.label is None:
                continue
            try:
                label_shape, label_affine = read_geometry(case.label)
            except MedSegNASError as exc:
                errors.append(f"{role} case '{case.name}': {exc}")
                continue
            if tuple(label_shape) != tuple(ref_shape) or not _same_affine(label_affine, ref_affine):
                errors.append(
                    f"{role} case '{case.name}': label {show(case.label)} is not on the grid of image "
                    f"{show(ref_path)} ({_grid_difference(label_shape, label_affine, ref_shape, ref_affine)})"
                )
            if check_labels:
                values = _label_values(case.label, read_volume, errors, show, role, case.name)
                if values is None:
                    continue
                labels_read += 1
                found_values |= values
                for value in values:
                    report.label_counts[value] = report.label_counts.get(value, 0) + 1
                undeclared = values - declared
                if dataset.labels_declared and undeclared:
                    errors.append(
                        f"label file {show(case.label)} contains value(s) {_format_values(undeclared)} that "
                        f"{dataset.path.name} does not declare (declared: "
                        f"{', '.join(f'{i.value} {i.name}' for i in dataset.labels)})"
                    )

    if check_labels and labels_read:
        if not dataset.labels_declared:
            warnings.append(
                f"{dataset.path.name} declares no label names; values found: {_format_values(found_values)}"
            )
        for info in dataset.foreground_labels:
            if info.value not in found_values:
                warnings.append(
                    f"label {info.value} '{info.name}' is declared but absent from all {labels_read} "
                    "label file(s) checked"
                )
    if raise_on_error:
        report.raise_if_errors()
    return report


def _label_values(
    path: Path, read_volume, errors: list[str], show, role: str, case_name: str
) -> set[int] | None:
    """Distinct values of a label map, or ``None`` after recording why it is not one."""
    try:
        volume = read_volume(path)
    except MedSegNASError as exc:
        errors.append(f"{role} case '{case_name}': {exc}")
        return None
    array = np.asarray(volume.array)
    if volume.num_channels != 1:
        errors.append(f"label file {show(path)} has {volume.num_channels} channels; a label map has one")
        return None
    values = np.unique(array)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            bad = values[~np.isfinite(values) | (values != np.round(values))][:5]
            errors.append(
                f"label file {show(path)} holds non-integer values (e.g. {', '.join(f'{v:g}' for v in bad)}); "
                "label maps must hold class numbers"
            )
            return None
    if values.size and values.min() < 0:
        errors.append(
            f"label file {show(path)} holds negative values ({_format_values(values[values < 0][:5])})"
        )
        return None
    return {int(v) for v in values}


def _grid_difference(shape, affine, ref_shape, ref_affine) -> str:
    if tuple(shape) != tuple(ref_shape):
        return f"shape {'x'.join(map(str, shape))} vs {'x'.join(map(str, ref_shape))}"
    shift = float(np.abs(np.asarray(affine)[:3, 3] - np.asarray(ref_affine)[:3, 3]).max())
    if shift > 1e-3:
        return f"origin differs by up to {shift:.3g} mm"
    return "spacing or direction differs"
