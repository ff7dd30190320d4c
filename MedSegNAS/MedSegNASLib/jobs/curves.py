"""The compact curves file of a run, ``curves.json``: what a panel plots without reading the event log.

A long search writes 100k progress events; a GUI timer that parses them all freezes Slicer for
seconds. So the worker (:class:`CurveRecorder`, fed by :meth:`JobContext.progress`) keeps its
numeric progress metrics in a small file, downsampled as it grows: at most :data:`MAX_POINTS`
ordinary points, evenly spaced (every ``stride``-th, the stride doubling whenever there would be
more) plus the newest one, and every validation (a point whose ``val_*`` metrics changed), which is never
dropped. The file is replaced atomically, at most every :data:`WRITE_INTERVAL_S` seconds once it
is large, and at the end of the run. A resumed worker continues the same file; the steps that
the stopped worker reported after its checkpoint are replaced by the new ones.

Format::

    {"version": 1, "stride": 4, "points": [{"step": 12, "stage": "search", "epoch": 1,
                                            "metrics": {"loss": 0.8, "val_dice": 0.4}, "validation": true}, ...]}
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from .rundir import RunDir, write_json_atomic

#: File name inside the run directory.
CURVES_FILE = "curves.json"
#: Ordinary (non-validation) points kept; beyond that every other one is dropped.
MAX_POINTS = 600
#: Seconds between two rewrites of a large curves file (a small one is rewritten on every point).
WRITE_INTERVAL_S = 2.0
#: Below this many points the file is rewritten on every point (cheap, and readers see each step).
SMALL_FILE_POINTS = 256


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics worth plotting: numbers (finite or not, as the event log writes them)."""
    found: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            found[str(key)] = float(value)
        elif isinstance(value, str) and value in ("nan", "inf", "-inf"):
            found[str(key)] = float(value)
    return found


def _jsonable(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


class CurveRecorder:
    """Worker side: collects progress points and writes ``curves.json`` (see the module docstring).

    Args:
        run: the run directory; an existing curves file (a resumed run) is continued.
    """

    def __init__(self, run: RunDir, *, max_points: int = MAX_POINTS) -> None:
        self.path = run.path / CURVES_FILE
        self.max_points = max(2, int(max_points))
        self.points: list[dict[str, Any]] = []
        self.stride = 1
        self._ordinary = 0
        self._seen = 0  # ordinary points offered so far (their "n")
        self._last_validation: dict[str, float] = {}
        self._last_write = -math.inf
        self._dirty = False
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.points = [point for point in data["points"] if isinstance(point, dict)]
            self.stride = int(data.get("stride") or 1)
            self._ordinary = sum(1 for point in self.points if not point.get("validation"))
            self._recount()

    @staticmethod
    def _validation_values(metrics: Mapping[str, Any]) -> dict[str, float]:
        return {key: value for key, value in _numeric(metrics).items() if key.startswith("val_")}

    def add(self, record: Mapping[str, Any]) -> bool:
        """Take one progress record (``step``, ``stage``, ``epoch``, ``metrics``); True when it
        changed the curves.

        Ordinary points are kept every :attr:`stride`-th (counted in ``n``), plus the newest one;
        validations always. Records without numeric metrics (loading, prediction) are not curves.
        """
        metrics = _numeric(record.get("metrics") or {})
        if not metrics:
            return False
        step, stage = int(record.get("step") or 0), str(record.get("stage") or "")
        # A resumed worker redoes the steps after its checkpoint: its points replace the old ones.
        while self.points and self.points[-1].get("stage") == stage and int(self.points[-1]["step"]) >= step:
            self.points.pop()
            self._recount()
        validation_values = self._validation_values(metrics)
        is_validation = any(
            self._last_validation.get(key) != value
            and not (math.isnan(value) and math.isnan(self._last_validation.get(key, 0.0)))
            for key, value in validation_values.items()
        )
        self._last_validation.update(validation_values)
        if not is_validation:  # the previous newest ordinary point, if off the stride, is replaced
            index = len(self.points) - 1
            while index >= 0 and self.points[index].get("validation"):
                index -= 1
            if index >= 0 and int(self.points[index].get("n", 0)) % self.stride:
                del self.points[index]
                self._ordinary -= 1
        point: dict[str, Any] = {"step": step, "stage": stage}
        if record.get("epoch") is not None:
            point["epoch"] = record["epoch"]
        point["metrics"] = {key: _jsonable(value) for key, value in metrics.items()}
        if is_validation:
            point["validation"] = True
        else:
            point["n"] = self._seen
            self._seen += 1
            self._ordinary += 1
        self.points.append(point)
        while self._ordinary > self.max_points:
            self._thin()
        self._dirty = True
        return True

    def _recount(self) -> None:
        """Counters after points were loaded or dropped: the validation values are the newest point's
        (every progress event carries the latest validation metrics)."""
        ordinary = [p for p in self.points if not p.get("validation")]
        self._ordinary = len(ordinary)
        self._last_validation = self._validation_values(self.points[-1]["metrics"]) if self.points else {}
        self._seen = int(ordinary[-1].get("n", len(ordinary) - 1)) + 1 if ordinary else 0

    def _thin(self) -> None:
        """Double the stride: drop the ordinary points off it (the newest one stays)."""
        self.stride *= 2
        last = len(self.points) - 1
        self.points = [
            p
            for index, p in enumerate(self.points)
            if p.get("validation") or index == last or int(p.get("n", 0)) % self.stride == 0
        ]
        self._ordinary = sum(1 for p in self.points if not p.get("validation"))

    def maybe_write(self, *, force: bool = False, now: float | None = None) -> bool:
        """Rewrite the file if points changed and it is small, ``force``d, or due; True if written."""
        now = time.monotonic() if now is None else now
        if not self._dirty:
            return False
        small = len(self.points) <= SMALL_FILE_POINTS
        if not (force or small or now - self._last_write >= WRITE_INTERVAL_S):
            return False
        write_json_atomic(self.path, {"version": 1, "stride": self.stride, "points": self.points})
        self._last_write, self._dirty = now, False
        return True


def read_curve_points(run: RunDir) -> list[dict[str, Any]] | None:
    """The points of a run's ``curves.json`` as progress-like records (``step``, ``stage``,
    ``epoch``, ``metrics`` with "nan"/"inf" strings as floats), or ``None`` when it has none."""
    try:
        data = json.loads((run.path / CURVES_FILE).read_text(encoding="utf-8"))
        points = data["points"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    found = []
    for point in points if isinstance(points, list) else []:
        if isinstance(point, dict) and isinstance(point.get("metrics"), dict):
            found.append({**point, "type": "progress", "metrics": _numeric(point["metrics"])})
    return found
