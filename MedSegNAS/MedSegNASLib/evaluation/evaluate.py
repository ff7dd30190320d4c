"""Evaluate a model (or existing label maps) on the labelled cases of a dataset.

Two sources of predictions, one report:

* :func:`evaluate_model`: each case is segmented by the inference engine
  (:func:`~MedSegNASLib.inference.engine.segment_volume`: the model's own preprocessing, the label
  map back on the case's grid), then scored against its label map.
* :func:`evaluate_predictions`: label maps already on disk, one per case, named after the case
  (``<case>.nii.gz``, ``.nii``, ``.nrrd``, ``.seg.nrrd``, ``.mha``...), e.g. the
  ``predictions/`` folder of a ``medsegnas train`` run or segmentations saved from Slicer.

**Cases** (``split``): ``validation`` is the validation fold that ``medsegnas search`` and
``medsegnas train`` use (:func:`~MedSegNASLib.data.datasets.train_val_split` with the search's
default fold 0 of 5, seed 0), or, for a model trained by ``medsegnas train``, exactly the
validation cases recorded in its bundle, so that the numbers compare with the training run's;
``test`` the labelled cases of the dataset's test list; ``all`` every labelled case. ``cases``
narrows the split to the named cases.

**Classes**: the dataset's declared labels (background excluded); without declared labels, the
model's, or (for predictions) every value found. A model's output classes are matched to the
dataset's by name, so a model whose channels are 0..C-1 scores against a dataset with other label
values. Metrics and the rules for absent classes: :mod:`.metrics`.

**Report**: one row per case and class (``case, label, name, dice, hd95_mm, nsd, voxels_ref,
voxels_pred, status``), and per class the mean and (population) standard deviation of each
metric over the cases where it is finite, with ``n`` the number of such cases; ``absent``,
``missed`` and ``false_positive`` count the other cases. :meth:`EvaluationReport.write` writes
``FILE.json`` and ``FILE.csv`` atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import Dataset, DatasetCase
from ..data.volume import LabelInfo, Volume
from ..errors import DatasetError, ImageFormatError, MedSegNASError
from ..models.registry import resolve_model_source
from .metrics import STATUSES, label_metrics

__all__ = [
    "SPLITS",
    "METRICS",
    "CSV_COLUMNS",
    "PREDICTION_SUFFIXES",
    "EvaluationReport",
    "evaluate_model",
    "evaluate_predictions",
    "open_dataset",
    "select_cases",
    "summarize",
    "find_prediction",
    "resolve_model_source",
]

#: ``split`` choices.
SPLITS = ("validation", "test", "all")
#: Metric columns, in report order.
METRICS = ("dice", "hd95_mm", "nsd")
#: Columns of the CSV table (one row per case and class).
CSV_COLUMNS = ("case", "label", "name", "dice", "hd95_mm", "nsd", "voxels_ref", "voxels_pred", "status")
#: File endings a prediction may have, tried in this order for ``<case><suffix>``.
PREDICTION_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Grids closer than this (rtol, atol in mm) are the same grid (NIfTI stores affines as float32).
_SAME_GRID_RTOL, _SAME_GRID_ATOL = 1e-4, 1e-3
#: The absent-class rules, stated in every JSON report.
CONVENTIONS = (
    "per case and class: reference and prediction both empty -> dice, hd95_mm, nsd NaN (status absent, "
    "left out of means); only one of them empty -> dice 0, nsd 0, hd95_mm inf (status missed or "
    "false_positive; inf left out of HD95 means). Means and population standard deviations are over "
    "the finite values; n counts them."
)

ProgressCallback = Callable[..., None]


# ------------------------------------------------------------------------------------ report


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def summarize(
    rows: Sequence[dict[str, Any]], names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Per class name: ``<metric>_mean``, ``<metric>_sd``, ``<metric>_n`` for dice, hd95_mm, nsd
    (finite values only), plus ``cases``, ``present``, ``absent``, ``missed``, ``false_positive``.

    ``names`` fixes the order (default: first appearance in ``rows``); a metric without any
    finite value has mean and sd NaN and n 0.
    """
    order = list(dict.fromkeys(names if names is not None else [row["name"] for row in rows]))
    summary: dict[str, dict[str, float]] = {}
    for name in order:
        mine = [row for row in rows if row["name"] == name]
        entry: dict[str, float] = {}
        for metric in METRICS:
            values = _finite([row[metric] for row in mine])
            entry[f"{metric}_mean"] = float(values.mean()) if values.size else math.nan
            entry[f"{metric}_sd"] = float(values.std()) if values.size else math.nan
            entry[f"{metric}_n"] = int(values.size)
        entry["cases"] = len(mine)
        for status in STATUSES.values():
            entry[status] = sum(row["status"] == status for row in mine)
        summary[name] = entry
    return summary


def _format_number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


@dataclass
class EvaluationReport:
    """Metrics of every case and class, and their summary per class.

    Attributes:
        rows: one dict per case and class with the :data:`CSV_COLUMNS` keys (floats may be NaN
            or inf, see :mod:`.metrics`).
        per_class: class name -> ``dice_mean``, ``dice_sd``, ``dice_n``, ``hd95_mm_*``,
            ``nsd_*``, ``cases``, ``present``, ``absent``, ``missed``, ``false_positive``
            (:func:`summarize`).
        info: what was evaluated: ``model`` or ``predictions``, ``dataset``, ``split``,
            ``split_source``, ``cases``, ``labels``, ``tolerance_mm``, ``seconds``, ``notes``.
    """

    rows: list[dict[str, Any]]
    per_class: dict[str, dict[str, float]]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls, rows: list[dict[str, Any]], names: Sequence[str], info: dict[str, Any]
    ) -> EvaluationReport:
        return cls(rows=rows, per_class=summarize(rows, names), info=info)

    def mean_dice(self) -> dict[str, float]:
        """Class name -> mean Dice over the cases where it is defined (NaN when it never is)."""
        return {name: entry["dice_mean"] for name, entry in self.per_class.items()}

    def mean_foreground_dice(self) -> float:
        """The mean of the class means (NaN when no class has a Dice)."""
        values = _finite(list(self.mean_dice().values()))
        return float(values.mean()) if values.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON content: NaN and inf become the strings ``"nan"`` and ``"inf"``."""
        from ..jobs.rundir import to_jsonable

        return to_jsonable(
            {
                **self.info,
                "conventions": CONVENTIONS,
                "mean_dice": self.mean_dice(),
                "mean_foreground_dice": self.mean_foreground_dice(),
                "per_class": self.per_class,
                "rows": self.rows,
            }
        )

    def csv_text(self) -> str:
        """The rows as CSV (:data:`CSV_COLUMNS`; NaN and inf written ``nan`` and ``inf``)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows:
            writer.writerow(
                [
                    (
                        f"{row[key]:.6g}"
                        if isinstance(row[key], float) and math.isfinite(row[key])
                        else row[key]
                    )
                    for key in CSV_COLUMNS
                ]
            )
        return buffer.getvalue()

    def write(self, out_json: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``out_json`` (the whole report) and the rows to the ``.csv`` next to it.

        Both files are written to temporary files in the destination folder first and renamed
        into place only when both are complete; on an error neither is left behind.

        Returns:
            ``(json_path, csv_path)``.

        Raises:
            MedSegNASError: the name does not end in ``.json`` or the folder is not writable.
        """
        json_path = Path(out_json).expanduser()
        if json_path.suffix.lower() != ".json":
            raise MedSegNASError(f"report file {json_path} must end in .json (the CSV goes next to it)")
        csv_path = json_path.with_suffix(".csv")
        contents = {
            csv_path: self.csv_text(),
            json_path: json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n",
        }
        staged: dict[Path, Path] = {}
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            for path, text in contents.items():
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
                staged[path] = tmp
                with open(tmp, "x", encoding="utf-8", newline="") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
            for path, tmp in staged.items():  # the JSON last: it marks a complete report
                os.replace(tmp, path)
        except OSError as exc:
            raise MedSegNASError(
                f"cannot write the report {json_path}: {exc.strerror or exc}; choose another --out"
            ) from None
        finally:
            for tmp in staged.values():
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return json_path, csv_path

    def format_table(self) -> str:
        """The per-class summary as a text table: mean ± sd over cases, and what was left out."""
        tolerance = self.info.get("tolerance_mm", 2.0)
        nsd_title = f"NSD@{tolerance:g}mm"
        width = max([len("class"), *(len(name) for name in self.per_class)]) + 2
        header = f"{'class':<{width}}{'cases':>5}  {'Dice':<15}  {'HD95 (mm)':<17}  {nsd_title:<15}  notes"
        lines = []
        source = self.info.get("model") or self.info.get("predictions") or "predictions"
        lines.append(
            f"{source} on {self.info.get('dataset', '?')}: {len(self.info.get('cases', []))} case(s), "
            f"split {self.info.get('split', '?')}"
        )
        lines += [header, "-" * len(header)]
        for name, entry in self.per_class.items():
            cells = []
            for metric, digits, cell_width in (("dice", 3, 15), ("hd95_mm", 2, 17), ("nsd", 3, 15)):
                mean, sd = entry[f"{metric}_mean"], entry[f"{metric}_sd"]
                if not math.isnan(mean):
                    text = f"{_format_number(mean, digits)} ± {_format_number(sd, digits)}"
                elif metric == "hd95_mm" and entry["missed"] + entry["false_positive"]:
                    text = "inf"  # only missed or false-positive cases: no finite distance
                else:
                    text = "-"
                cells.append(f"{text:<{cell_width}}")
            notes = ", ".join(
                f"{int(entry[status])} {status.replace('_', ' ')}"
                for status in ("missed", "false_positive", "absent")
                if entry[status]
            )
            lines.append(f"{name:<{width}}{int(entry['cases']):>5}  " + "  ".join(cells) + f"  {notes}")
        lines.append(f"mean foreground Dice: {_format_number(self.mean_foreground_dice(), 3)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ cases


def open_dataset(dataset: str | os.PathLike[str], dataroot: str | os.PathLike[str] | None) -> Dataset:
    """:func:`~MedSegNASLib.data.datasets.load_dataset` of absolute paths (relative ones are
    resolved against the working directory, as a user typing them means)."""
    from ..data.datasets import load_dataset

    root = None if dataroot is None else Path(dataroot).expanduser().absolute()
    return load_dataset(Path(dataset).expanduser().absolute(), dataroot=root)


def _search_split_defaults() -> tuple[int, int, int]:
    """(fold, n_folds, seed) that ``medsegnas search`` and ``train`` use unless configured otherwise."""
    from dataclasses import fields

    from ..nas.search import SearchConfig

    defaults = {f.name: f.default for f in fields(SearchConfig)}
    return int(defaults["fold"]), int(defaults["n_folds"]), int(defaults["seed"])


def _labelled_cases(dataset: Dataset) -> list[DatasetCase]:
    """Every labelled case of the dataset (training, validation, test), each once."""
    seen: dict[tuple[Any, ...], DatasetCase] = {}
    for case in [*dataset.cases, *dataset.validation, *dataset.test]:
        if case.label is not None:
            seen.setdefault((case.images, case.label), case)
    return list(seen.values())


def select_cases(
    dataset: Dataset,
    split: str = "validation",
    cases: Sequence[str] | None = None,
    *,
    validation_names: Sequence[str] | None = None,
) -> tuple[list[DatasetCase], str]:
    """The labelled cases to evaluate and a sentence saying where the list comes from.

    Args:
        dataset: from :func:`~MedSegNASLib.data.datasets.load_dataset`.
        split: ``validation``, ``test`` or ``all`` (see the module docstring).
        cases: case names to keep (each must be in the split).
        validation_names: the validation cases a model's training run recorded; used for
            ``validation`` when every one of them is a labelled case of ``dataset``.

    Raises:
        DatasetError: unknown split, no labelled case in it (e.g. a test list without labels),
            or a name in ``cases`` that is not in the split.
    """
    from ..data.datasets import train_val_split

    if split not in SPLITS:
        raise MedSegNASError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    labelled = _labelled_cases(dataset)
    if split == "validation":
        by_name = {case.name: case for case in labelled}
        recorded = list(validation_names or [])
        if recorded and all(name in by_name for name in recorded):
            chosen = [by_name[name] for name in recorded]
            source = "the validation cases recorded in the model (its training run's split)"
        else:
            fold, n_folds, seed = _search_split_defaults()
            try:
                _, chosen = train_val_split(dataset, fold=fold, n_folds=n_folds, seed=seed)
            except DatasetError as exc:
                raise DatasetError(f"{exc}; to evaluate every labelled case use --split all") from None
            chosen = [case for case in chosen if case.label is not None]
            source = f"train_val_split(fold={fold}, n_folds={n_folds}, seed={seed}), as search and train"
            if dataset.validation:
                source = "the dataset's validation list"
            if recorded:
                source += " (the model's recorded validation cases are not all in this dataset)"
        if not chosen:
            raise DatasetError(f"the validation split of {dataset.path} has no labelled case")
    elif split == "test":
        chosen = [case for case in dataset.test if case.label is not None]
        if not chosen:
            raise DatasetError(
                f"{dataset.path} lists {len(dataset.test)} test case(s) but none has a label map, so there is "
                "nothing to compare with; use --split validation or --split all"
            )
        source = "the dataset's labelled test cases"
    else:
        chosen = labelled
        if not chosen:
            raise DatasetError(f"{dataset.path} has no labelled case to evaluate")
        source = "every labelled case of the dataset"
    if cases:
        wanted = [str(name).strip() for name in cases if str(name).strip()]
        in_split = {case.name: case for case in chosen}
        unknown = [name for name in wanted if name not in in_split]
        if unknown:
            elsewhere = [name for name in unknown if any(case.name == name for case in labelled)]
            hint = (
                f"; {', '.join(elsewhere)} are labelled cases outside it: add --split all"
                if elsewhere
                else ""
            )
            known = sorted(in_split)
            raise DatasetError(
                f"case(s) {', '.join(unknown)} are not in the {split} split of {dataset.path.name} "
                f"(it has {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}){hint}"
            )
        chosen = [in_split[name] for name in dict.fromkeys(wanted)]
        source += f", narrowed to {len(chosen)} named case(s)"
    return chosen, source


def _check_case_files(cases: Sequence[DatasetCase], dataset: Dataset) -> None:
    missing = [
        f"'{case.name}': {dataset.display_path(path)}"
        for case in cases
        for path in case.files()
        if not path.is_file()
    ]
    if missing:
        raise DatasetError(
            f"{len(missing)} file(s) of the selected cases are missing: {'; '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )


# --------------------------------------------------------------------------------- label maps


def _segment_label_map(volume: Volume, names: dict[str, int], log: Callable[[str], None]) -> np.ndarray:
    """A segmentation file (``meta`` has ``labels`` and ``segment_layers``) as one label map,
    segments renamed to the dataset's values by name where the names match."""
    array = np.asarray(volume.array)
    labels: list[LabelInfo] = list(volume.meta["labels"])
    layers: list[int] = list(volume.meta.get("segment_layers") or [0] * len(labels))
    out = np.zeros(array.shape[1:], dtype=np.int32)
    renamed = []
    overlap = False
    for label, layer in zip(labels, layers, strict=False):
        target = names.get(label.name.strip().lower(), int(label.value))
        if target != label.value:
            renamed.append(f"'{label.name}' {label.value}->{target}")
        mask = array[min(int(layer), array.shape[0] - 1)] == label.value
        overlap = overlap or bool(np.any(out[mask] != 0))
        out[mask] = target
    name = volume.meta.get("path", "segmentation")
    if renamed:
        log(f"{name}: segment values matched to the dataset's labels by name ({', '.join(renamed)})")
    if overlap:
        log(f"{name}: segments overlap; where they do, the later segment counts")
    return out


def _label_map(volume: Volume, what: str, names: dict[str, int], log: Callable[[str], None]) -> np.ndarray:
    """``(I, J, K)`` integer label map of a label file, checked."""
    path = volume.meta.get("path", what)
    if isinstance(volume.meta.get("labels"), list) and volume.meta.get("segment_layers") is not None:
        return _segment_label_map(volume, names, log)
    if volume.num_channels != 1:
        raise ImageFormatError(f"{path}: {what} has {volume.num_channels} channels; a label map has one")
    array = np.asarray(volume.array[0])
    if array.dtype.kind == "f":
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise ImageFormatError(
                f"{path}: {what} holds non-integer values; label maps must hold class numbers"
            )
        array = rounded.astype(np.int32)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.size and array.min() < 0:
        raise ImageFormatError(
            f"{path}: {what} holds negative values; label maps must hold class numbers >= 0"
        )
    return array


def _on_grid(array: np.ndarray, affine: np.ndarray, reference: Volume) -> tuple[np.ndarray, bool]:
    """``array`` (on ``affine``) on the reference's voxel grid: as is when the grids are the same,
    else by nearest-neighbour resampling (outside the array: background). Returns (array, resampled)."""
    from scipy.ndimage import affine_transform

    shape = reference.spatial_shape
    if tuple(array.shape) == shape and np.allclose(
        affine, reference.affine, rtol=_SAME_GRID_RTOL, atol=_SAME_GRID_ATOL
    ):
        return array, False
    to_source = np.linalg.inv(affine) @ reference.affine  # reference index -> source index
    # "grid-constant": a position a rounding error outside the edge voxel's centre still takes that
    # voxel ("constant" would drop the whole outer layer of a cropped segmentation).
    resampled = affine_transform(
        array,
        to_source[:3, :3],
        offset=to_source[:3, 3],
        output_shape=shape,
        order=0,
        mode="grid-constant",
        cval=0,
    )
    return resampled, True


def _label_names(labels: Sequence[LabelInfo]) -> dict[str, int]:
    return {str(info.name).strip().lower(): int(info.value) for info in labels}


def _scored_labels(labels: Sequence[LabelInfo]) -> list[LabelInfo]:
    """Foreground labels with unique names (a repeated name gets its value appended)."""
    counts: dict[str, int] = {}
    for info in labels:
        counts[info.name] = counts.get(info.name, 0) + 1
    return [
        info if counts[info.name] == 1 else LabelInfo(info.value, f"{info.name} ({info.value})", info.color)
        for info in labels
        if info.value != 0
    ]


def _score(
    case: str,
    prediction: np.ndarray,
    reference: Volume,
    reference_map: np.ndarray,
    labels: Sequence[LabelInfo],
    tolerance_mm: float,
) -> list[dict[str, Any]]:
    metrics = label_metrics(prediction, reference_map, labels, reference.spacing, tolerance_mm=tolerance_mm)
    return [{"case": case, **item.as_dict()} for item in metrics]


def _fill_absent(
    rows: list[dict[str, Any]], cases: Sequence[str], labels: Sequence[LabelInfo]
) -> list[dict[str, Any]]:
    """Rows for (case, class) pairs never scored (a class found only in other cases): absent."""
    have = {(row["case"], row["label"]) for row in rows}
    for case in cases:
        for info in labels:
            if (case, info.value) not in have:
                rows.append(
                    {"case": case, "label": info.value, "name": info.name, "dice": math.nan, "hd95_mm": math.nan,
                     "nsd": math.nan, "voxels_ref": 0, "voxels_pred": 0, "status": "absent"}
                )  # fmt: skip
    order = {info.value: index for index, info in enumerate(labels)}
    case_order = {name: index for index, name in enumerate(cases)}
    return sorted(rows, key=lambda row: (case_order[row["case"]], order.get(row["label"], 1 << 30)))


def _case_summary(rows: Sequence[dict[str, Any]]) -> str:
    return ", ".join(
        f"{row['name']} {_format_number(row['dice'], 3)}" for row in rows if row["status"] != "absent"
    )


def _mean_case_dice(rows: Sequence[dict[str, Any]]) -> float | None:
    values = _finite([row["dice"] for row in rows])
    return round(float(values.mean()), 4) if values.size else None


def find_prediction(folder: Path, case: str) -> Path | None:
    """The prediction file of ``case`` in ``folder`` (``<case><suffix>``), None if there is none.

    Raises:
        MedSegNASError: several files could be it (e.g. ``a.nii.gz`` and ``a.seg.nrrd``).
    """
    found = [
        folder / f"{case}{suffix}" for suffix in PREDICTION_SUFFIXES if (folder / f"{case}{suffix}").is_file()
    ]
    if len(found) > 1:
        raise MedSegNASError(
            f"case '{case}' has several prediction files in {folder}: {', '.join(p.name for p in found)}; keep one"
        )
    return found[0] if found else None


# ------------------------------------------------------------------------------ predictions


def evaluate_predictions(
    predictions_dir: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    *,
    split: str = "validation",
    cases: Sequence[str] | None = None,
    tolerance_mm: float = 2.0,
    dataroot: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    stop: Callable[[], None] | None = None,
) -> EvaluationReport:
    """Score label-map files named after the cases (``<case>.nii.gz`` ...) against the dataset's labels.

    A prediction on another voxel grid than its reference (e.g. a Slicer segmentation saved
    with a cropped extent) is resampled onto the reference grid (nearest neighbour); segments of
    a ``.seg.nrrd`` are matched to the dataset's labels by name. For the ``predictions`` folder of
    a ``medsegnas train`` run, ``validation`` means the run's validation cases (recorded in the
    ``model`` bundle next to it).

    Args:
        predictions_dir: folder holding one label map per case.
        dataset: dataset.json, its folder or a datalist.
        split, cases: which labelled cases (see :func:`select_cases`); every one needs a file.
        tolerance_mm: NSD tolerance in mm.
        dataroot: folder that relative dataset paths are relative to.
        progress: called as ``progress(done, total, case=name, dice=mean Dice of the case)``.
        log: receives one line per case and notes.
        stop: called between cases; may raise to stop (a job's cancel request).

    Raises:
        MedSegNASError: missing folder or files, a case without prediction, unreadable or
            invalid label maps.
    """
    say = log or (lambda message: None)
    started = time.perf_counter()
    folder = Path(predictions_dir).expanduser()
    if not folder.is_dir():
        raise MedSegNASError(f"predictions folder {folder} does not exist (or is not a folder)")
    data = open_dataset(dataset, dataroot)
    # RUN/artifacts/predictions of a train run: its validation cases are recorded in RUN/artifacts/model.
    recorded = (
        _recorded_validation(_model_metadata(folder.parent / "model"))
        if folder.name == "predictions"
        else None
    )
    chosen, source = select_cases(data, split, cases, validation_names=recorded)
    _check_unique_names(chosen)
    files = {case.name: find_prediction(folder, case.name) for case in chosen}
    missing = [name for name, path in files.items() if path is None]
    if missing:
        present = sorted(p.name for p in folder.iterdir() if p.is_file())[:5]
        raise MedSegNASError(
            f"{len(missing)} of {len(chosen)} case(s) have no prediction in {folder}: {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''} (expected <case>.nii.gz, .seg.nrrd, .nrrd or .mha; found "
            f"{', '.join(present) or 'no files'}); pick cases with --cases"
        )
    _check_case_files(chosen, data)
    labels = _scored_labels(data.labels) if data.labels_declared else None
    names = _label_names(data.labels)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    found_values: dict[int, None] = {}
    for done, case in enumerate(chosen, start=1):
        if stop is not None:
            stop()
        reference, ref_map = _read_reference(case, names, say)
        prediction_volume = _read_label_file(files[case.name])
        pred_map = _label_map(prediction_volume, "the prediction", names, say)
        pred_map, resampled = _on_grid(pred_map, prediction_volume.affine, reference)
        if resampled:
            notes.append(f"{case.name}: prediction resampled onto the reference grid")
            say(
                f"{case.name}: {files[case.name].name} is on another voxel grid; resampled onto the reference's"
            )
        case_labels = labels
        if case_labels is None:
            values = sorted({int(v) for v in np.unique(ref_map)} | {int(v) for v in np.unique(pred_map)})
            found_values.update(dict.fromkeys(v for v in values if v != 0))
            case_labels = [LabelInfo(v, f"label {v}", (0.5, 0.5, 0.5)) for v in values if v != 0]
        case_rows = _score(case.name, pred_map, reference, ref_map, case_labels, tolerance_mm)
        rows += case_rows
        say(f"{case.name}: Dice {_case_summary(case_rows) or 'no class present'}")
        if progress is not None:
            progress(done, len(chosen), case=case.name, dice=_mean_case_dice(case_rows))
    if labels is None:
        labels = [LabelInfo(v, f"label {v}", (0.5, 0.5, 0.5)) for v in sorted(found_values)]
    rows = _fill_absent(rows, [case.name for case in chosen], labels)
    facts = {
        "predictions": str(folder.absolute()),
        **_common_info(data, split, source, chosen, labels, tolerance_mm),
        "seconds": round(time.perf_counter() - started, 2),
        "notes": notes,
    }
    return EvaluationReport.from_rows(rows, [label.name for label in labels], facts)


def _check_unique_names(cases: Sequence[DatasetCase]) -> None:
    names = [case.name for case in cases]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(
            f"several selected cases share the name(s) {', '.join(repeated)} (the image file name), so their "
            "predictions and report rows cannot be told apart; give the images distinct names"
        )


def _read_label_file(path: Path) -> Volume:
    from ..data.io import read_volume

    return read_volume(path)


def _read_reference(
    case: DatasetCase, names: dict[str, int], say: Callable[[str], None]
) -> tuple[Volume, np.ndarray]:
    assert case.label is not None
    reference = _read_label_file(case.label)
    return reference, _label_map(reference, "the reference label map", names, say)


def _common_info(
    dataset: Dataset,
    split: str,
    source: str,
    chosen: Sequence[DatasetCase],
    labels: Sequence[LabelInfo],
    tolerance_mm: float,
) -> dict[str, Any]:
    return {
        "dataset": str(dataset.path),
        "split": split,
        "split_source": source,
        "cases": [case.name for case in chosen],
        "labels": [{"value": info.value, "name": info.name} for info in labels],
        "tolerance_mm": float(tolerance_mm),
    }


# ------------------------------------------------------------------------------------ models


def _model_metadata(root: Path) -> dict[str, Any]:
    try:
        metadata = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _recorded_validation(metadata: dict[str, Any]) -> list[str] | None:
    training = (metadata.get("medsegnas") or {}).get("training") or {}
    names = training.get("validation_cases") if isinstance(training, dict) else None
    if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
        return names
    return None


def _value_map(
    model_labels: Sequence[LabelInfo], dataset_labels: Sequence[LabelInfo], say: Callable[[str], None]
) -> np.ndarray | None:
    """Lookup table model output value -> dataset value (None: the same values).

    Classes are matched by name when every foreground class of the model has a namesake in the
    dataset; otherwise by value, and differing names are reported.
    """
    if not dataset_labels:
        return None
    by_name = _label_names(dataset_labels)
    foreground = [info for info in model_labels if info.value != 0]
    if foreground and all(info.name.strip().lower() in by_name for info in foreground):
        table = np.arange(max(info.value for info in model_labels) + 1, dtype=np.int32)
        for info in foreground:
            table[info.value] = by_name[info.name.strip().lower()]
        return None if np.array_equal(table, np.arange(table.size)) else table
    dataset_by_value = {info.value: info.name for info in dataset_labels}
    differing = [
        f"{info.value} '{info.name}' vs '{dataset_by_value[info.value]}'"
        for info in foreground
        if info.value in dataset_by_value
        and info.name.strip().lower() != dataset_by_value[info.value].strip().lower()
    ]
    if differing:
        say(
            "warning: the model's class names differ from the dataset's; classes are compared by value: "
            + ", ".join(differing)
        )
    return None


def evaluate_model(
    model: str | os.PathLike[str] | Any,
    dataset: str | os.PathLike[str],
    *,
    split: str = "validation",
    cases: Sequence[str] | None = None,
    device: str = "auto",
    tolerance_mm: float = 2.0,
    progress: ProgressCallback | None = None,
    dataroot: str | os.PathLike[str] | None = None,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
    stop: Callable[[], None] | None = None,
) -> EvaluationReport:
    """Segment each case of a split with a model and score it against the case's label map.

    Args:
        model: registry id, bundle folder or archive, a ``medsegnas train`` run directory, or an
            already opened :class:`~MedSegNASLib.inference.model.SegmentationModel`.
        dataset: dataset.json, its folder or a datalist.
        split, cases: which labelled cases (see :func:`select_cases`; ``validation`` uses the
            model's recorded validation cases when it has them).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        tolerance_mm: NSD tolerance in mm.
        progress: called as ``progress(done, total, case=name, dice=mean Dice of the case)``.
        dataroot: folder that relative dataset paths are relative to.
        trust: the user allows the bundle to run code (as ``segment --trust``).
        log: receives one line per case and notes.
        stop: called between cases and inside segmentation; may raise to stop.

    Raises:
        MedSegNASError: unknown model, unusable dataset or split, unreadable files, a model that
            does not take the dataset's channels.
    """
    from ..data.io import read_volume, read_volumes
    from ..inference.engine import Progress, SegmentOptions, segment_volume, select_device
    from ..inference.model import SegmentationModel, load_resolved_model

    say = log or (lambda message: None)
    started = time.perf_counter()
    select_device(device)  # an unusable --device fails before anything is read
    data = open_dataset(dataset, dataroot)
    if isinstance(model, SegmentationModel):
        network, model_text = model, model.name
    else:
        source = resolve_model_source(model)
        network = load_resolved_model(source, trust=trust)
        model_text = os.fspath(model)
    metadata = _model_metadata(Path(network.root))
    chosen, source_text = select_cases(data, split, cases, validation_names=_recorded_validation(metadata))
    _check_unique_names(chosen)
    _check_case_files(chosen, data)
    labels = _scored_labels(data.labels if data.labels_declared else network.labels)
    table = _value_map(network.labels, data.labels, say) if data.labels_declared else None
    names = _label_names(data.labels)
    model_values = {int(table[lb.value]) if table is not None else lb.value for lb in network.labels}
    unscored = [f"{info.value} '{info.name}'" for info in labels if info.value not in model_values]
    if unscored:
        say(
            f"warning: the model has no output for class(es) {', '.join(unscored)}; they will score as missed"
        )
    say(
        f"evaluating '{network.name}' on {len(chosen)} case(s) of {data.path} ({split}: {source_text}); "
        f"classes: {', '.join(info.name for info in labels)}"
    )
    options = SegmentOptions(device=device)
    engine_progress = Progress(check_stop=stop)
    packed = data.num_channels > 1
    rows: list[dict[str, Any]] = []
    for done, case in enumerate(chosen, start=1):
        if stop is not None:
            stop()
        if len(case.images) == 1:
            image = read_volume(case.images[0], dtype=np.float32, fourth_axis_channels=packed)
        else:
            image = read_volumes(case.images, dtype=np.float32)
        image.meta.setdefault("path", str(case.images[0]))
        result = segment_volume(image, network, options, engine_progress)
        pred_map = np.asarray(result.labels.array[0])
        if table is not None:
            pred_map = table[np.minimum(pred_map, table.size - 1)]
        reference, ref_map = _read_reference(case, names, say)
        pred_map, resampled = _on_grid(pred_map, result.labels.affine, reference)
        if resampled:
            say(
                f"{case.name}: the label map is not on its image's grid; prediction resampled onto the label's"
            )
        case_rows = _score(case.name, pred_map, reference, ref_map, labels, tolerance_mm)
        rows += case_rows
        say(f"{case.name}: Dice {_case_summary(case_rows) or 'no class present'}")
        if progress is not None:
            progress(done, len(chosen), case=case.name, dice=_mean_case_dice(case_rows))
    facts = {
        "model": model_text,
        "model_name": network.name,
        **_common_info(data, split, source_text, chosen, labels, tolerance_mm),
        "device": str(select_device(device)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return EvaluationReport.from_rows(rows, [label.name for label in labels], facts)
