"""Clean-up of a label map: largest connected component per label, hole filling, minimum size.

All three work label by label inside each label's bounding box (``scipy.ndimage.find_objects``),
so a small organ in a large volume costs little. Components are 26-connected (face, edge and
corner neighbours), as MONAI's ``KeepLargestConnectedComponent`` by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["PostprocessSpec", "postprocess_labels", "LargestComponentStep"]


@dataclass(frozen=True)
class PostprocessSpec:
    """Which clean-up steps to run (in this order: min size, largest component, hole filling).

    Args:
        min_size: remove connected components smaller than this many voxels (0: keep all).
        largest_component: keep only the largest connected component of each label.
        fill_holes: give each label the background voxels it encloses completely.
    """

    largest_component: bool = False
    fill_holes: bool = False
    min_size: int = 0

    @property
    def active(self) -> bool:
        return self.largest_component or self.fill_holes or self.min_size > 0

    @classmethod
    def parse(cls, text: str) -> PostprocessSpec:
        """Parse ``"largest-component,fill-holes,min-size=N"`` (any subset, any order).

        Raises:
            ValueError: an unknown step or a bad ``min-size`` value, with the accepted forms.
        """
        largest = holes = False
        min_size = 0
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, _, value = part.partition("=")
            name = name.strip().lower().replace("_", "-")
            if name == "largest-component" and not value:
                largest = True
            elif name == "fill-holes" and not value:
                holes = True
            elif name == "min-size" and value:
                try:
                    min_size = int(value)
                except ValueError:
                    raise ValueError(f"min-size needs a whole number of voxels, got {value!r}") from None
                if min_size < 0:
                    raise ValueError(f"min-size must be >= 0, got {min_size}")
            else:
                raise ValueError(
                    f"unknown post-processing step {part!r}; use largest-component, fill-holes, min-size=N"
                )
        return cls(largest_component=largest, fill_holes=holes, min_size=min_size)

    def describe(self) -> str:
        steps = []
        if self.min_size:
            steps.append(f"components under {self.min_size} voxels removed")
        if self.largest_component:
            steps.append("largest component per label")
        if self.fill_holes:
            steps.append("holes filled")
        return ", ".join(steps) or "none"


def postprocess_labels(
    labels: np.ndarray, spec: PostprocessSpec, values: Iterable[int] | None = None
) -> np.ndarray:
    """Apply ``spec`` to a label map in place and return it.

    Args:
        labels: ``(I, J, K)`` integer label map (0 = background).
        spec: the steps to run.
        values: labels to clean (default: every non-zero value present).
    """
    from scipy import ndimage

    if not spec.active:
        return labels
    structure = ndimage.generate_binary_structure(3, 3)
    boxes = ndimage.find_objects(labels)
    todo = [v for v in (values if values is not None else range(1, len(boxes) + 1)) if v > 0]
    for value in todo:
        if value > len(boxes) or boxes[value - 1] is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[value - 1])
        region = labels[box]
        mask = region == value
        if spec.min_size or spec.largest_component:
            components, count = ndimage.label(mask, structure=structure)
            if count > 1 or spec.min_size:
                sizes = np.bincount(components.ravel())
                sizes[0] = 0
                keep = sizes >= max(spec.min_size, 1)
                if spec.largest_component:  # ties: the first (lowest index) component wins
                    largest = int(np.argmax(sizes))
                    keep = np.zeros_like(keep)
                    keep[largest] = sizes[largest] >= max(spec.min_size, 1)
                removed = mask & ~keep[components]
                region[removed] = 0
                mask &= ~removed
        if spec.fill_holes and mask.any():
            holes = ndimage.binary_fill_holes(mask) & ~mask & (region == 0)
            region[holes] = value
    return labels


class LargestComponentStep:
    """A bundle's ``KeepLargestConnectedComponent(d)`` on a label map (``is_onehot=False``,
    ``independent=True``, full connectivity, one component: MONAI's defaults), computed with
    scipy: MONAI's needs scikit-image or cuCIM, which a Slicer Python may lack.

    Same result as MONAI's: per applied label the largest 26-connected component is kept, the
    first in raster order on ties (MONAI takes ``argmax`` of the component sizes), and the removed
    voxels become background.
    """

    def __init__(self, applied_labels: Iterable[int] | None = None) -> None:
        self.applied_labels = None if applied_labels is None else [int(v) for v in applied_labels]

    def __call__(self, labels):  # torch tensor or numpy array (...), returned as given
        import torch

        array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        array = np.array(array, copy=True)
        values = (
            self.applied_labels if self.applied_labels is not None else [int(v) for v in np.unique(array)]
        )
        postprocess_labels(array, PostprocessSpec(largest_component=True), values)
        return torch.from_numpy(array) if isinstance(labels, torch.Tensor) else array
