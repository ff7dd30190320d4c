"""Pictures of a volume with its label map: axial, coronal and sagittal slices with a colored overlay.

Used by the demo, the README screenshot and run artifacts. Slices are taken after reorienting the
voxel axes to the closest RAS axes (no resampling), so the picture shows the patient the usual way
up even when the volume is oblique: axial seen from the feet, patient's right on the left of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from .volume import LabelInfo, Volume


def _to_closest_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the (I, J, K) axes of ``array`` so they point along +R, +A, +S.

    Returns the reoriented array and the voxel spacing along R, A, S (mm)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    reoriented = nio.apply_orientation(array, ornt)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    spacing_ras = np.empty(3)
    for axis, (target, _flip) in enumerate(ornt):
        spacing_ras[int(target)] = spacing[axis]
    return reoriented, spacing_ras


def render_overlay(
    image: Volume,
    label: Volume | None,
    labels: Sequence[LabelInfo],
    path: str | Path,
    *,
    window: tuple[float, float] = (-160.0, 240.0),
    title: str | None = None,
    alpha: float = 0.45,
) -> Path:
    """Write a PNG with three orthogonal slices through the centre of the labelled region.

    Args:
        image: the intensity volume (first channel is shown), values in the units of ``window``.
        label: label map on the same grid as ``image`` (``(1, I, J, K)`` integers), or None.
        labels: label table giving the overlay colors and the legend (value 0 is not drawn).
        path: output PNG path; written atomically.
        window: display range (for CT, Hounsfield units; the default is an abdominal window).
        title: figure title.
        alpha: overlay opacity in [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    img, spacing = _to_closest_ras(np.asarray(image.array[0], dtype=np.float32), image.affine)
    lab = None
    if label is not None:
        lab, _ = _to_closest_ras(np.asarray(label.array[0]), label.affine)
    if lab is not None and lab.any():
        center = [int(round(c)) for c in np.argwhere(lab > 0).mean(axis=0)]
    else:
        center = [s // 2 for s in img.shape]

    max_value = max([int(info.value) for info in labels] + [int(lab.max()) if lab is not None else 0, 1])
    palette = np.zeros((max_value + 1, 4))
    for info in labels:
        if info.value > 0:
            palette[info.value] = [*info.color, 1.0]
    cmap = ListedColormap(palette)

    # (name, slicing, horizontal spacing, vertical spacing): arrays are (R, A, S); imshow draws
    # rows top-down, so transpose to put S (or A) vertically and flip it to point up; R is
    # flipped horizontally so that the patient's right is on the left (radiological convention).
    views = [
        ("axial", lambda a: a[:, :, center[2]].T[::-1, ::-1], spacing[0], spacing[1]),
        ("coronal", lambda a: a[:, center[1], :].T[::-1, ::-1], spacing[0], spacing[2]),
        ("sagittal", lambda a: a[center[0], :, :].T[::-1, :], spacing[1], spacing[2]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 4.0), facecolor="black")
    for ax, (name, cut, dx, dy) in zip(axes, views, strict=True):
        ax.imshow(
            cut(img), cmap="gray", vmin=window[0], vmax=window[1], aspect=dy / dx, interpolation="bilinear"
        )
        if lab is not None:
            seg = cut(lab).astype(int)
            ax.imshow(
                np.ma.masked_equal(seg, 0),
                cmap=cmap,
                vmin=0,
                vmax=max_value,
                alpha=alpha,
                aspect=dy / dx,
                interpolation="nearest",
            )
        ax.set_title(name, color="white", fontsize=10)
        ax.axis("off")
    handles = [Patch(color=info.color, label=info.name) for info in labels if info.value > 0]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white")
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        path, lambda handle: fig.savefig(handle, dpi=100, facecolor=fig.get_facecolor(), format="png")
    )
    plt.close(fig)
    return path
