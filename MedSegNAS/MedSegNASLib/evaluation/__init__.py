"""Evaluation: Dice, HD95 and NSD of segmentations against reference label maps.

    metrics = label_metrics(prediction, reference, labels, spacing_mm)          # metrics.py: two arrays
    report = evaluate_model("spleen_ct_segmentation", "Task09_Spleen")          # evaluate.py: a model
    report = evaluate_predictions("runs/train-1/artifacts/predictions", "data") #   or files on disk
    report.write("evaluation.json")                                             # + evaluation.csv

Modules: :mod:`.metrics` (per-class metrics, the absent-class rules), :mod:`.evaluate` (cases,
models, reports), :mod:`.commands` (``medsegnas evaluate``). Importing this package loads neither
torch nor MONAI.
"""

from __future__ import annotations

__all__ = [
    "ClassMetrics",
    "EvaluationReport",
    "label_metrics",
    "evaluate_model",
    "evaluate_predictions",
]


def __getattr__(name: str):
    """Load the metric and evaluation modules (torch, MONAI) only when one of their names is used."""
    if name in ("ClassMetrics", "label_metrics"):
        from . import metrics

        return getattr(metrics, name)
    if name in ("EvaluationReport", "evaluate_model", "evaluate_predictions"):
        from . import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
