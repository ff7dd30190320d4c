"""Synthetic CT-like abdominal phantoms with organ labels, and phantom datasets in MSD layout.

A phantom is a deterministic function of its seed: the same seed gives the same bytes. It
stands in for patient data in tests, demos and tutorials, so it imitates what makes real
abdominal CT hard for a segmentation pipeline:

* **Anatomy.** An elliptic trunk of muscle (~50 HU) under a subcutaneous fat layer
  (~-100 HU) in air (-1000 HU); lungs (~-850 HU) above the diaphragm, a heart, a vertebral
  column with discs, the aorta and vena cava, bowel with visceral fat and gas pockets (all
  unlabelled), and the labelled organs of :data:`PHANTOM_LABELS`: the liver large on the
  patient's right, the spleen on the left, both kidneys posterior beside the spine. Organs are
  ellipsoids deformed by low-frequency random fields, so no two cases share a shape.
* **Intensities.** Organ means follow non-contrast liver/spleen and enhanced kidneys (cortex
  brighter than the renal sinus); each organ has its own texture; the image is blurred by a
  point-spread function, gets correlated Gaussian noise (10-20 HU) and a smooth
  multiplicative + additive bias field, and is stored as ``int16`` Hounsfield units.
* **Geometry.** The voxel grid is stored like a DICOM-derived CT (``i`` towards the patient's
  left, ``j`` posterior) and tilted by a random rotation of 2-8 degrees, so the affine is
  oblique; the patient is placed off-centre. In-plane spacing is chosen so the field of view
  is 1.12-1.3 times the body width (what a 512 matrix covers at 0.6-0.8 mm, scaled to
  ``size``); slices are 1.4-2.0 times thicker than the in-plane spacing, as in clinical
  abdominal CT.

Anatomy, geometry and intensity parameters are drawn independently of ``size``: one seed is
the same patient at every resolution; only the white noise differs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from ..errors import DatasetError
from .volume import LabelInfo, Volume


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (r / 255.0, g / 255.0, b / 255.0)


#: Label table of every labelled phantom. Colors are those of Slicer's GenericAnatomyColors
#: (the left kidney slightly lighter than the right one so the two stay distinguishable).
PHANTOM_LABELS: list[LabelInfo] = [
    LabelInfo(0, "background", _rgb(0, 0, 0)),
    LabelInfo(1, "liver", _rgb(221, 130, 101)),
    LabelInfo(2, "spleen", _rgb(157, 108, 162)),
    LabelInfo(3, "right kidney", _rgb(185, 102, 83)),
    LabelInfo(4, "left kidney", _rgb(212, 126, 151)),
]

#: Label table of the ``abdomen-hard`` task: the four organs, a thin pancreas, the vessels
#: (aorta, vena cava, portal and splenic veins) and liver lesions.
PHANTOM_HARD_LABELS: list[LabelInfo] = [
    *PHANTOM_LABELS,
    LabelInfo(5, "pancreas", _rgb(249, 180, 111)),
    LabelInfo(6, "vessels", _rgb(216, 101, 79)),
    LabelInfo(7, "liver lesion", _rgb(144, 238, 144)),
]

#: Phantom tasks: the demo default and the harder benchmark task (see :func:`generate_phantom_case`).
PHANTOM_TASKS = ("abdomen", "abdomen-hard")

#: ``abdomen-hard``: the contrasts a case is drawn in, each with its organ and vessel means (HU on
#: CT; for ``mr-t1`` a T1-like signal stored on the same integer scale: fat bright, vessels dark).
_HARD_CONTRASTS: dict[str, dict[str, float]] = {
    "non-contrast": {"liver": 58, "spleen": 48, "kidney": 32, "pancreas": 42, "vessels": 42, "lesion": 30},
    "arterial": {"liver": 70, "spleen": 115, "kidney": 190, "pancreas": 115, "vessels": 280, "lesion": 120},
    "portal-venous": {
        "liver": 110,
        "spleen": 112,
        "kidney": 165,
        "pancreas": 95,
        "vessels": 170,
        "lesion": 60,
    },
    "mr-t1": {"liver": 130, "spleen": 50, "kidney": 70, "pancreas": 165, "vessels": -300, "lesion": -60},
}


def phantom_labels(task: str = "abdomen") -> list[LabelInfo]:
    """The label table of a phantom task."""
    _check_task(task)
    return list(PHANTOM_HARD_LABELS if task == "abdomen-hard" else PHANTOM_LABELS)


def _check_task(task: str) -> None:
    if task not in PHANTOM_TASKS:
        raise ValueError(f"unknown phantom task {task!r}; choose one of {', '.join(PHANTOM_TASKS)}")


#: Nominal range (HU) from which each organ's mean intensity is drawn, before texture, noise,
#: partial volume and bias field.
PHANTOM_ORGAN_HU: dict[str, tuple[float, float]] = {
    "liver": (55.0, 70.0),
    "spleen": (42.0, 55.0),
    "right kidney": (150.0, 185.0),
    "left kidney": (150.0, 185.0),
}

#: Smallest ``size`` accepted by :func:`generate_phantom_case` (organs get too few voxels below).
MIN_PHANTOM_SIZE = 16

#: Folder of the unlabelled images of a phantom dataset (listed under ``"unlabeled"`` in
#: ``dataset.json``), next to the MSD folders ``imagesTr``, ``labelsTr`` and ``imagesTs``.
UNLABELED_FOLDER = "imagesUnlabeled"

_AIR_HU = -1000.0
_FAT_HU = -100.0
_MUSCLE_HU = 50.0
_BOWEL_HU = 30.0
_LUNG_HU = -850.0
_HEART_HU = 45.0
_CORTICAL_BONE_HU = 750.0
_TRABECULAR_BONE_HU = 260.0
_DISC_HU = 90.0
_CSF_HU = 15.0
_AORTA_HU = 170.0
_IVC_HU = 130.0
_GAS_HU = -950.0

# Physical box (mm, patient frame centred on the body) over which low-frequency random fields
# are defined. It contains every field of view the geometry draws, so fields do not depend on
# ``size``.
_FIELD_EXTENT_MM = np.array([420.0, 420.0, 720.0])


@dataclass(frozen=True)
class _Organ:
    """An ellipsoid deformed by a smooth random field, in the patient frame (RAS mm)."""

    value: int
    centre: np.ndarray  # (3,) mm
    semi_axes: np.ndarray  # (3,) mm
    rotation: np.ndarray  # (3, 3) organ axes -> patient axes
    mean_hu: float
    texture_hu: float
    deformation: float  # amplitude of the radial deformation (fraction of the squared radius)
    taper: float = 0.0  # wedge shape: thinner towards the organ's local -x end (liver)


class _PhysicalField:
    """A smooth random field over :data:`_FIELD_EXTENT_MM`, standardised to mean 0, std ~1.

    Generated on a coarse grid of ``cell_mm`` cells and sampled with trilinear interpolation,
    so it costs the same at every image size and is identical across sizes."""

    def __init__(self, rng: np.random.Generator, cell_mm: float) -> None:
        from scipy import ndimage

        self.cell_mm = cell_mm
        shape = tuple(int(n) for n in np.ceil(2 * _FIELD_EXTENT_MM / cell_mm) + 1)
        coarse = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.0, mode="wrap")
        self.grid = ((coarse - coarse.mean()) / coarse.std()).astype(np.float32)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Sample at ``points`` (3, ...) in mm; returns an array of shape ``points.shape[1:]``."""
        from scipy import ndimage

        index = (points + _FIELD_EXTENT_MM.reshape((3,) + (1,) * (points.ndim - 1))) / self.cell_mm
        return ndimage.map_coordinates(self.grid, index, order=1, mode="nearest").astype(np.float32)


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation matrix by ``degrees`` about ``axis`` (Rodrigues' formula)."""
    x, y, z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def _rotation_z(degrees: float) -> np.ndarray:
    return _rotation(np.array([0.0, 0.0, 1.0]), degrees)


def _organ_shape(
    points: np.ndarray, organ: _Organ, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Inside mask and normalised squared radius (< 1 inside, ``inf`` far away) of an organ.

    ``points`` is ``(3, I, J, K)`` in mm. The deformation field lives in the organ's own
    normalised frame, so its draw does not depend on the grid."""
    from scipy import ndimage

    coarse = ndimage.gaussian_filter(rng.standard_normal((7, 7, 7)), sigma=1.0)
    coarse = ((coarse - coarse.mean()) / coarse.std()).astype(np.float32)
    offset = points - organ.centre.reshape(3, 1, 1, 1).astype(np.float32)
    # u = R^T (p - c) / semi_axes, component by component (cheaper than einsum on big grids)
    local = [
        sum(float(organ.rotation[row, axis]) * offset[row] for row in range(3)) / float(organ.semi_axes[axis])
        for axis in range(3)
    ]
    if organ.taper:
        thickness = np.clip(1.0 - organ.taper + organ.taper * local[0], 0.35, None)
        local[1] = local[1] / thickness
        local[2] = local[2] / thickness
    reach = 1.6
    near = (np.abs(local[0]) < reach) & (np.abs(local[1]) < reach) & (np.abs(local[2]) < reach)
    radius2 = np.full(points.shape[1:], np.inf, dtype=np.float32)
    if not near.any():
        return np.zeros(points.shape[1:], dtype=bool), radius2
    u = np.stack([component[near] for component in local])
    bump = ndimage.map_coordinates(coarse, (u + reach) / (2 * reach) * 6, order=1, mode="nearest")
    radius2[near] = (u**2).sum(axis=0) / (1.0 + organ.deformation * bump)
    return radius2 < 1.0, radius2


def _draw_geometry(rng: np.random.Generator, size: int, hard_rng: np.random.Generator | None = None) -> dict:
    """Trunk size, voxel grid (affine) and patient position of one case.

    The random draws do not depend on ``size``; only the spacing does (field of view / size).
    ``hard_rng`` (the ``abdomen-hard`` task) redraws the field of view (1.0-1.7 times the body
    width: from a tight crop to a wide one) and the slice thickness (1-3.2 times the in-plane
    spacing) from its own stream, so the default task's draws stay as they were."""
    half_width = rng.uniform(135.0, 160.0)  # lateral semi-axis of the trunk, mm
    half_depth = rng.uniform(95.0, 115.0)  # antero-posterior semi-axis, mm
    fov_xy = 2 * half_width * rng.uniform(1.12, 1.3)
    slice_ratio = rng.uniform(1.4, 2.0)
    if hard_rng is not None:
        fov_xy = 2 * half_width * hard_rng.uniform(1.0, 1.7)
        slice_ratio = hard_rng.uniform(1.0, 3.2)
    axis = rng.standard_normal(3)
    tilt = _rotation(axis, rng.uniform(2.0, 8.0))
    # Scanner coordinates of the grid centre (the table position), and the patient's offset from it.
    grid_centre = np.array([rng.uniform(-15, 15), rng.uniform(-40, 10), rng.uniform(-600, -200)])
    shift = np.array([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), rng.uniform(-0.08, 0.08)])
    spacing_xy = fov_xy / size
    spacing = np.array([spacing_xy, spacing_xy, spacing_xy * slice_ratio])
    # Stored like a DICOM-derived CT: i towards the patient's left, j posterior, k superior.
    direction = tilt @ np.diag([-1.0, -1.0, 1.0])
    linear = direction @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = grid_centre - linear @ np.full(3, (size - 1) / 2.0)
    body_centre = grid_centre + shift * np.array([fov_xy, fov_xy, size * spacing[2]])
    return {
        "half_width": half_width,
        "half_depth": half_depth,
        "affine": affine,
        "body_centre": body_centre,
    }


def _patient_points(affine: np.ndarray, body_centre: np.ndarray, size: int) -> np.ndarray:
    """RAS position (mm) of every voxel centre relative to the body centre, shape ``(3, S, S, S)``."""
    idx = np.arange(size, dtype=np.float32)
    i, j, k = idx[:, None, None], idx[None, :, None], idx[None, None, :]
    linear = affine[:3, :3].astype(np.float32)
    offset = (affine[:3, 3] - body_centre).astype(np.float32)
    return np.stack(
        [linear[row, 0] * i + linear[row, 1] * j + linear[row, 2] * k + offset[row] for row in range(3)]
    )


def generate_phantom_case(
    seed: int, size: int = 64, *, labelled: bool = True, task: str = "abdomen"
) -> tuple[Volume, Volume | None]:
    """Generate one synthetic abdominal CT and its organ label map.

    ``task="abdomen-hard"`` (:data:`PHANTOM_HARD_LABELS`) is the same patient with what makes
    architecture choices matter: a thin pancreas (a curved tube of 5-9 mm radius from the duodenum to
    the splenic hilum), labelled vessels (aorta, vena cava and 2-4 mm portal and splenic veins),
    1-3 liver lesions (4-14 mm), one of four contrasts per case (non-contrast, arterial and
    portal-venous CT, and an MR-like T1 contrast with a different tissue ordering: fat bright,
    vessels dark), a field of view from 1.0 to 1.7 times the body width and slices 1-3.2 times the
    in-plane spacing. Its extra draws come from a separate stream: the default task is unchanged.

    Args:
        seed: any non-negative integer; the same seed always gives identical arrays and affine.
        size: number of voxels along each axis (the grid is ``size``\\ :sup:`3`); >= 16. The
            field of view does not depend on ``size``: voxels get larger as ``size`` shrinks.
        labelled: also return the label map. The image is the same either way.
        task: ``"abdomen"`` (the demo default) or ``"abdomen-hard"``.

    Returns:
        ``(image, label)``: ``image.array`` is ``int16`` Hounsfield units of shape
        ``(1, size, size, size)``; ``label`` is ``uint8`` of the same shape with the values of
        :data:`PHANTOM_LABELS`, on the same grid (same affine), or ``None`` when not ``labelled``.
        Both affines map voxel indices to RAS mm (oblique, anisotropic spacing).
    """
    from scipy import ndimage  # here, not at import: keeps `import MedSegNASLib.data` light

    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(size) != size or size < MIN_PHANTOM_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_PHANTOM_SIZE}, got {size!r}")
    size = int(size)
    _check_task(task)
    hard = task == "abdomen-hard"
    hard_rng = np.random.default_rng([int(seed), 0xA8D]) if hard else None
    contrast = str(hard_rng.choice(list(_HARD_CONTRASTS))) if hard_rng is not None else "non-contrast"
    anatomy_seq, field_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(3)
    rng = np.random.default_rng(anatomy_seq)  # scalar parameters
    field_rng = np.random.default_rng(field_seq)  # smooth fields (size-independent)
    noise_rng = np.random.default_rng(noise_seq)  # voxel noise (depends on size)

    geometry = _draw_geometry(rng, size, hard_rng)
    a_x, a_y = geometry["half_width"], geometry["half_depth"]
    points = _patient_points(geometry["affine"], geometry["body_centre"], size)
    x, y, z = points

    hu = np.full((size,) * 3, _AIR_HU, dtype=np.float32)
    label = np.zeros((size,) * 3, dtype=np.uint8)

    # --- trunk: elliptic cross-section with a smoothly wavy outline ---------------------------
    outline = _PhysicalField(field_rng, cell_mm=60.0)(points)
    body_q = ((x / a_x) ** 2 + (y / a_y) ** 2) / (1.0 + 0.08 * outline)
    body = body_q < 1.0
    depth = np.sqrt(x**2 + y**2) * (1.0 / np.sqrt(np.maximum(body_q, 1e-6)) - 1.0)  # mm below the skin
    fat_thickness = rng.uniform(10.0, 28.0) * (1.0 + 0.3 * np.clip(y / a_y, -1, 1))  # thicker anteriorly
    wall_thickness = rng.uniform(8.0, 13.0)
    hu[body] = _FAT_HU
    muscle = body & (depth >= fat_thickness)
    hu[muscle] = _MUSCLE_HU
    # Vertebral body about a third of the way from the back; erector muscles fill the space behind.
    spine_y = -rng.uniform(0.3, 0.4) * a_y
    vertebra_radius = rng.uniform(15.0, 19.0)
    back_muscles = (np.abs(x) < 0.3 * a_x) & (y < spine_y - vertebra_radius)
    cavity = muscle & (depth >= fat_thickness + wall_thickness) & ~back_muscles

    # Bowel and mesentery: soft tissue with visceral fat and a few gas pockets.
    bowel_field = _PhysicalField(field_rng, cell_mm=18.0)(points)
    gas_field = _PhysicalField(field_rng, cell_mm=15.0)(points)
    hu[cavity] = _BOWEL_HU + 10.0 * bowel_field[cavity]
    hu[cavity & (bowel_field > rng.uniform(1.1, 1.5))] = _FAT_HU + 20.0
    hu[cavity & (gas_field > 2.0) & (y > 0)] = _GAS_HU

    # --- labelled organs (shapes first: the thorax and vessels are fitted around them) ------
    organ_hu = {name: rng.uniform(*PHANTOM_ORGAN_HU[name]) for name in PHANTOM_ORGAN_HU}
    if hard_rng is not None:
        means = _HARD_CONTRASTS[contrast]
        organ_hu = {
            "liver": means["liver"] + hard_rng.uniform(-8, 8),
            "spleen": means["spleen"] + hard_rng.uniform(-8, 8),
            "right kidney": means["kidney"] + hard_rng.uniform(-10, 10),
            "left kidney": means["kidney"] + hard_rng.uniform(-10, 10),
        }
    liver_semi = np.array([0.55 * a_x, 0.68 * a_y, rng.uniform(70.0, 85.0)]) * rng.uniform(0.9, 1.1)
    liver_centre = np.array([0.36 * a_x, 0.04 * a_y, rng.uniform(35.0, 55.0)]) + rng.uniform(-6, 6, 3)
    dome = liver_centre[2] + 0.8 * liver_semi[2]  # top of the abdomen, under the lungs
    spleen_semi = np.array([24.0, 46.0, 50.0]) * rng.uniform(0.85, 1.15)
    kidney_semi = np.array([26.0, 23.0, 52.0])
    organs = [
        _Organ(
            1, liver_centre, liver_semi, _rotation_z(rng.uniform(-8, 8)), organ_hu["liver"], 7.0, 0.3, 0.3
        ),
        _Organ(
            2,
            np.array([-0.6 * a_x, -0.25 * a_y, dome - spleen_semi[2] - rng.uniform(5, 25)])
            + rng.uniform(-5, 5, 3),
            spleen_semi,
            _rotation_z(rng.uniform(-40, -20)),
            organ_hu["spleen"],
            6.0,
            0.3,
        ),
        _Organ(
            3,
            np.array([0.37 * a_x, spine_y - 5.0, rng.uniform(-50, -25)]) + rng.uniform(-4, 4, 3),
            kidney_semi * rng.uniform(0.9, 1.1),
            _rotation_z(rng.uniform(15, 30)),
            organ_hu["right kidney"],
            9.0,
            0.2,
        ),
        _Organ(
            4,
            np.array([-0.37 * a_x, spine_y - 5.0, rng.uniform(-35, -10)]) + rng.uniform(-4, 4, 3),
            kidney_semi * rng.uniform(0.9, 1.1),
            _rotation_z(rng.uniform(-30, -15)),
            organ_hu["left kidney"],
            9.0,
            0.2,
        ),
    ]
    organ_room = muscle & (depth >= fat_thickness + 0.5 * wall_thickness)
    shapes = []
    near_organ = np.zeros((size,) * 3, dtype=bool)
    for organ in organs:
        inside, radius2 = _organ_shape(points, organ, field_rng)
        shapes.append((inside & organ_room, radius2))
        near_organ |= radius2 < 1.5

    # --- thorax: lungs over the diaphragm, heart between them (unlabelled) --------------------
    for side in (-1.0, 1.0):
        lung_centre = np.array([side * 0.47 * a_x, 0.02 * a_y, dome + 200.0])
        lung = _Organ(0, lung_centre, np.array([0.4 * a_x, 0.78 * a_y, 210.0]), np.eye(3), 0.0, 0.0, 0.15)
        inside = _organ_shape(points, lung, field_rng)[0] & cavity & ~near_organ
        hu[inside] = _LUNG_HU + 25.0 * bowel_field[inside]
    heart_centre = np.array([-0.12 * a_x, 0.25 * a_y, dome + 75.0])
    heart = _Organ(0, heart_centre, np.array([62.0, 55.0, 60.0]), _rotation_z(-30.0), 0.0, 0.0, 0.1)
    hu[_organ_shape(points, heart, field_rng)[0] & cavity] = _HEART_HU

    # --- spine, psoas and great vessels (unlabelled) ------------------------------------------
    for side in (-1.0, 1.0):
        psoas_radius = rng.uniform(12.0, 18.0) * np.clip((dome - 40.0 - z) / 120.0, 0.2, 1.0)
        psoas = (x - side * (vertebra_radius + 14.0)) ** 2 + (y - spine_y) ** 2 < psoas_radius**2
        hu[psoas & muscle & (z < dome - 40.0)] = _MUSCLE_HU
    disc_period = rng.uniform(28.0, 34.0)
    disc_phase = rng.uniform(0.0, disc_period)
    spine_d2 = x**2 + (y - spine_y) ** 2
    vertebra = spine_d2 < vertebra_radius**2
    hu[vertebra] = _TRABECULAR_BONE_HU
    hu[vertebra & (spine_d2 > (vertebra_radius - 3.0) ** 2)] = _CORTICAL_BONE_HU
    hu[vertebra & (np.mod(z + disc_phase, disc_period) < 6.0)] = _DISC_HU
    canal_y = spine_y - vertebra_radius - 9.0
    canal_d2 = x**2 + (y - canal_y) ** 2
    hu[(canal_d2 < 14.0**2) & (canal_d2 >= 8.0**2) & body] = _CORTICAL_BONE_HU
    hu[canal_d2 < 8.0**2] = _CSF_HU
    vessel_y = spine_y + vertebra_radius + 13.0
    aorta = (x + 0.1 * a_x) ** 2 + (y - vessel_y) ** 2 < rng.uniform(9.0, 12.0) ** 2
    ivc = (x - 0.12 * a_x) ** 2 + (y - vessel_y + 4.0) ** 2 < rng.uniform(9.0, 12.0) ** 2
    hu[aorta & cavity] = _AORTA_HU
    hu[ivc & cavity & (z < dome + 20.0)] = _IVC_HU

    # --- paint the organs; later ones win where they touch (kidneys indent liver and spleen) --
    texture = ndimage.gaussian_filter(noise_rng.standard_normal((size,) * 3).astype(np.float32), sigma=0.8)
    texture /= max(float(texture.std()), 1e-6)
    for organ, (inside, radius2) in zip(organs, shapes, strict=True):
        label[inside] = organ.value
        values = organ.mean_hu + organ.texture_hu * texture[inside]
        if organ.value in (3, 4):  # renal sinus: fat and collecting system, darker than cortex
            values = np.where(radius2[inside] < 0.3, 0.45 * values, values)
        hu[inside] = values

    if hard_rng is not None:
        hu = _paint_hard_structures(
            hu, label, points, hard_rng, contrast, cavity=cavity, aorta=aorta, ivc=ivc & (z < dome + 20.0),
            liver=label == 1, organs=organs, texture=texture, a_x=a_x, a_y=a_y,
        )  # fmt: skip

    # --- acquisition: point-spread function, bias field, correlated noise -------------------
    hu = ndimage.gaussian_filter(hu, sigma=0.5)
    gain = _PhysicalField(field_rng, cell_mm=120.0)(points)
    offset = _PhysicalField(field_rng, cell_mm=150.0)(points)
    hu = (hu - _AIR_HU) * (1.0 + 0.008 * gain) + _AIR_HU + 4.0 * offset
    noise = ndimage.gaussian_filter(noise_rng.standard_normal((size,) * 3).astype(np.float32), sigma=0.5)
    noise *= rng.uniform(10.0, 20.0) / max(float(noise.std()), 1e-6)
    hu += noise

    image_array = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)[None]
    meta = {"description": f"MedSegNAS synthetic abdominal CT phantom, seed {int(seed)}", "modality": "CT"}
    if hard:
        meta = {
            "description": f"MedSegNAS synthetic abdominal phantom (abdomen-hard, {contrast}), seed {int(seed)}",
            "modality": "MR-like" if contrast == "mr-t1" else "CT",
            "contrast": contrast,
        }
    image = Volume(image_array, geometry["affine"].copy(), dict(meta))
    if not labelled:
        return image, None
    return image, Volume(label[None], geometry["affine"].copy(), {**meta, "labels": phantom_labels(task)})


def _tube(points: np.ndarray, nodes: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Voxels within ``radius`` (mm, per node, interpolated along each segment) of a polyline ``nodes`` (n, 3)."""
    inside = np.zeros(points.shape[1:], dtype=bool)
    for a, b, ra, rb in zip(nodes[:-1], nodes[1:], radius[:-1], radius[1:], strict=True):
        direction = b - a
        length2 = float(direction @ direction)
        offset = points - a.reshape(3, 1, 1, 1).astype(np.float32)
        t = np.clip(sum(direction[i] * offset[i] for i in range(3)) / length2, 0.0, 1.0)
        distance2 = sum((offset[i] - t * direction[i]) ** 2 for i in range(3))
        inside |= distance2 < (ra + t * (rb - ra)) ** 2
    return inside


def _paint_hard_structures(
    hu, label, points, rng, contrast, *, cavity, aorta, ivc, liver, organs, texture, a_x, a_y
) -> np.ndarray:
    """``abdomen-hard``: pancreas, vessels and liver lesions in ``label`` and ``hu``; the MR-like remap."""
    means = _HARD_CONTRASTS[contrast]
    liver_c, spleen_c, right_c = organs[0].centre, organs[1].centre, organs[2].centre
    # Pancreas: head by the duodenum (right of the midline, in front of the right kidney), body over
    # the spine, tail at the splenic hilum; radius 5-9 mm, thinner towards the tail.
    head = np.array([0.12 * a_x, right_c[1] + 40.0, right_c[2] + 10.0]) + rng.uniform(-5, 5, 3)
    body = np.array([-0.05 * a_x, head[1] + rng.uniform(0, 10), head[2] + rng.uniform(5, 15)])
    tail = spleen_c + np.array([0.35 * (0 - spleen_c[0]), 25.0, -0.2 * (spleen_c[2] - body[2])])
    radius = rng.uniform(6.5, 9.0)
    pancreas = _tube(points, np.stack([head, body, tail]), np.array([radius, 0.85 * radius, 0.6 * radius]))
    pancreas &= cavity & (label == 0)
    # Vessels: the aorta and vena cava, and 2-4 mm veins: splenic (hilum behind the pancreas to the
    # midline) and portal (from there into the liver).
    confluence = body + np.array([0.0, -8.0, 0.0])
    splenic = _tube(
        points,
        np.stack([spleen_c, tail + np.array([0, -8.0, 0]), confluence]),
        np.full(3, rng.uniform(2.5, 4.0)),
    )
    portal = _tube(
        points,
        np.stack([confluence, 0.5 * (confluence + liver_c), liver_c]),
        np.full(3, rng.uniform(3.0, 4.5)),
    )
    vessels = (aorta | ivc | ((splenic | portal) & ~pancreas)) & cavity
    label[pancreas] = 5
    hu[pancreas] = means["pancreas"] + rng.uniform(-8, 8) + 8.0 * texture[pancreas]
    label[vessels] = 6
    hu[vessels] = means["vessels"] + rng.uniform(-10, 10) + 5.0 * texture[vessels]
    # Liver lesions: 1-3 spheres of 4-14 mm centred inside the liver.
    liver_voxels = np.flatnonzero(liver & (label == 1))
    for _ in range(int(rng.integers(1, 4)) if liver_voxels.size else 0):
        centre = points.reshape(3, -1)[:, liver_voxels[int(rng.integers(liver_voxels.size))]]
        distance2 = sum((points[i] - centre[i]) ** 2 for i in range(3))
        lesion = (distance2 < rng.uniform(4.0, 14.0) ** 2) & (label == 1)
        label[lesion] = 7
        hu[lesion] = means["lesion"] + rng.uniform(-10, 10) + 6.0 * texture[lesion]
    if contrast == "mr-t1":
        # T1-like tissue ordering on the same integer scale: fat bright, fluid and bone dark, air black.
        tissue = np.interp(hu, [-1000, -850, -100, 15, 50, 260, 750], [-1000, -750, 380, -220, 0, 90, -450])
        organs_mask = label > 0
        tissue[organs_mask] = hu[organs_mask]  # organ, vessel and lesion signals were painted above
        hu = tissue.astype(np.float32)
    return hu


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

#: Role of a case -> code mixed into its seed. Never renumber: it would change every dataset.
_ROLE_CODES = {"training": 0, "test": 1, "unlabeled": 2}


@dataclass(frozen=True)
class PhantomCasePlan:
    """One case of a phantom dataset: its id, role, seed and files (relative to the dataset)."""

    case_id: str
    role: str  # "training" | "test" | "unlabeled"
    seed: int
    image: str
    label: str | None


def phantom_case_seed(seed: int, role: str, index: int) -> int:
    """Seed of case ``index`` of a role, derived from the dataset seed.

    Independent of the number of cases and of the generation order, so a dataset can be
    generated case by case and resumed."""
    state = np.random.SeedSequence([int(seed), _ROLE_CODES[role], int(index)]).generate_state(1)
    return int(state[0])


def plan_phantom_dataset(*, cases: int, seed: int, unlabeled: int, test_cases: int) -> list[PhantomCasePlan]:
    """The cases of a phantom dataset, in generation order: training, test, unlabeled.

    Case ids are numbered across roles (``phantom_000`` ...), as in the Medical Segmentation
    Decathlon, so every file name is unique in the dataset."""
    plan: list[PhantomCasePlan] = []
    number = 0
    for role, count in (("training", cases), ("test", test_cases), ("unlabeled", unlabeled)):
        folder = {"training": "imagesTr", "test": "imagesTs", "unlabeled": UNLABELED_FOLDER}[role]
        for index in range(count):
            case_id = f"phantom_{number:03d}"
            # Test cases get labels too (labelsTs/): a held-out split that can be scored
            # (``medsegnas evaluate --split test``) and that nothing is ever selected on.
            label = {"training": f"labelsTr/{case_id}.nii.gz", "test": f"labelsTs/{case_id}.nii.gz"}.get(role)
            plan.append(
                PhantomCasePlan(
                    case_id, role, phantom_case_seed(seed, role, index), f"{folder}/{case_id}.nii.gz", label
                )
            )
            number += 1
    return plan


def phantom_dataset_json(plan: list[PhantomCasePlan], *, size: int, seed: int, task: str = "abdomen") -> dict:
    """The ``dataset.json`` of a phantom dataset (MSD keys plus ``unlabeled`` and ``label_colors``)."""
    labels = phantom_labels(task)
    training = [{"image": f"./{c.image}", "label": f"./{c.label}"} for c in plan if c.role == "training"]
    # MSD lists test images as bare paths; with labels they are {"image", "label"} objects, as in
    # MONAI datalists (both readers of MedSegNAS accept either).
    test = [{"image": f"./{c.image}", "label": f"./{c.label}"} for c in plan if c.role == "test"]
    unlabeled = [f"./{c.image}" for c in plan if c.role == "unlabeled"]
    description = (
        "Synthetic CT-like abdominal volumes with liver, spleen and kidney labels, generated by "
        "MedSegNAS for tests and demos. Not patient data."
    )
    if task == "abdomen-hard":
        description = (
            "Synthetic abdominal volumes (task abdomen-hard) with liver, spleen, kidney, pancreas, vessel and "
            "liver-lesion labels, in non-contrast, arterial and portal-venous CT and an MR-like T1 contrast, "
            "with variable field of view and slice thickness; generated by MedSegNAS. Not patient data."
        )
    return {
        "name": "MedSegNASPhantom" if task == "abdomen" else "MedSegNASPhantomHard",
        "description": description,
        "reference": "MedSegNAS phantom generator (MedSegNASLib.data.phantom)",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(info.value): info.name for info in labels},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        # Extensions (ignored by MSD readers): images without labels for self-supervised
        # pretraining, and display colors (0-255 RGB) of the labels.
        "numUnlabeled": len(unlabeled),
        "unlabeled": unlabeled,
        "label_colors": {
            str(info.value): [round(255 * c) for c in info.color] for info in labels if info.value
        },
        "phantom": {"seed": int(seed), "size": int(size), **({"task": task} if task != "abdomen" else {})},
    }


def _refuse_foreign_dataset(dataset_json: Path) -> None:
    """Raise if ``dataset_json`` exists and does not describe a phantom dataset (never overwrite data)."""
    if not dataset_json.exists():
        return
    try:
        existing = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        existing = None
    if not (isinstance(existing, dict) and isinstance(existing.get("phantom"), dict)):
        raise DatasetError(
            f"{dataset_json.parent} already holds a dataset ({dataset_json.name}) that is not a MedSegNAS "
            "phantom; write the phantom to another folder"
        )


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    *,
    cases: int = 8,
    size: int = 64,
    seed: int = 0,
    unlabeled: int = 4,
    test_cases: int = 2,
    on_case: Callable[[int, int, str], None] | None = None,
    skip_existing: set[str] | None = None,
    task: str = "abdomen",
) -> Path:
    """Write a phantom dataset in Medical Segmentation Decathlon layout.

    Layout under ``out_dir``: ``imagesTr/`` + ``labelsTr/`` (``cases`` labelled training
    cases), ``imagesTs/`` + ``labelsTs/`` (``test_cases`` labelled test cases: a held-out split,
    listed in ``dataset.json``'s ``test`` as ``{"image", "label"}``), ``imagesUnlabeled/`` (``unlabeled`` images
    for self-supervised pretraining), all ``phantom_NNN.nii.gz``, and ``dataset.json``, which
    is written last and atomically: a folder without it is an unfinished dataset.

    Args:
        out_dir: dataset folder (created if needed).
        cases, test_cases, unlabeled: number of cases of each role (``cases`` >= 1).
        size: voxels per axis of every volume (>= 16).
        seed: dataset seed; each case's seed is derived from ``(seed, role, index)``.
        on_case: called as ``on_case(done, total, case_id)`` after each case (also a skipped
            one). It may raise to stop between cases (e.g. on a cancel request).
        skip_existing: case ids already written (e.g. from a job checkpoint); they are not
            generated again if their files exist.
        task: ``"abdomen"`` (default) or ``"abdomen-hard"`` (see :func:`generate_phantom_case`).

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        DatasetError: ``out_dir`` already holds a ``dataset.json`` that is not a phantom's.
    """
    from .io import write_volume

    if int(cases) != cases or cases < 1:
        raise ValueError(f"cases must be an integer >= 1, got {cases!r}")
    for name, count in (("unlabeled", unlabeled), ("test_cases", test_cases)):
        if int(count) != count or count < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {count!r}")
    if int(size) != size or size < MIN_PHANTOM_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_PHANTOM_SIZE}, got {size!r}")
    _check_task(task)
    out = Path(out_dir)
    _refuse_foreign_dataset(out / "dataset.json")
    plan = plan_phantom_dataset(cases=cases, seed=seed, unlabeled=unlabeled, test_cases=test_cases)
    out.mkdir(parents=True, exist_ok=True)  # role folders appear with their first file
    skip = skip_existing or set()
    for done, case in enumerate(plan, start=1):
        files = [out / case.image] + ([out / case.label] if case.label else [])
        if not (case.case_id in skip and all(f.is_file() for f in files)):
            image, label = generate_phantom_case(case.seed, size, labelled=case.label is not None, task=task)
            write_volume(image, out / case.image)
            if case.label is not None:
                write_volume(label, out / case.label, labels=phantom_labels(task))
        if on_case is not None:
            on_case(done, len(plan), case.case_id)
    dataset_json = out / "dataset.json"
    write_json_atomic(dataset_json, phantom_dataset_json(plan, size=size, seed=seed, task=task))
    return dataset_json
