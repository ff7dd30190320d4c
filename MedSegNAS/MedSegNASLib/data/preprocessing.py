"""The preprocessing spec: how a model wants its input, shared by training, bundles and inference.

A :class:`PreprocessingSpec` is computed once (from dataset statistics, or given by the user),
used to build the training transforms, stored in the exported bundle's ``metadata.json`` and
turned into the bundle's ``inference.json`` preprocessing. One object, three uses, so a model is
always fed the way it was trained.

Intensity normalisation kinds:

* ``"ct_window"``: clip Hounsfield units to ``[a_min, a_max]`` and scale linearly to
  ``[b_min, b_max]`` (MONAI ``ScaleIntensityRange``; the published DiNTS pancreas search uses
  [-87, 199] -> [0, 1]).
* ``"zscore"``: subtract the mean and divide by the standard deviation of the non-zero voxels of
  each channel (MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)``), for MRI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

INTENSITY_KINDS = ("ct_window", "zscore")


@dataclass
class IntensitySpec:
    """Intensity normalisation; see the module docstring for the kinds."""

    kind: str = "ct_window"
    a_min: float = -87.0
    a_max: float = 199.0
    b_min: float = 0.0
    b_max: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in INTENSITY_KINDS:
            raise ValueError(f"intensity kind must be one of {INTENSITY_KINDS}, got {self.kind!r}")
        if self.kind == "ct_window" and not self.a_max > self.a_min:
            raise ValueError(f"CT window needs a_max > a_min, got [{self.a_min}, {self.a_max}]")


@dataclass
class PreprocessingSpec:
    """How to turn an image file into network input.

    Args:
        channels: modality name of each input channel, e.g. ``["CT"]`` or ``["T2", "ADC"]``.
        spacing: target voxel size along R, A, S in mm after reorientation, or None to keep the
            image's own spacing.
        orientation: axis codes the image is reoriented to first (``"RAS"``).
        intensity: intensity normalisation.
        patch_size: sliding-window / training patch size in voxels, ``(3,)``.
    """

    channels: list[str] = field(default_factory=lambda: ["CT"])
    spacing: list[float] | None = None
    orientation: str = "RAS"
    intensity: IntensitySpec = field(default_factory=IntensitySpec)
    patch_size: list[int] = field(default_factory=lambda: [96, 96, 96])

    def __post_init__(self) -> None:
        if isinstance(self.intensity, dict):
            self.intensity = IntensitySpec(**self.intensity)
        if self.spacing is not None:
            self.spacing = [float(s) for s in self.spacing]
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing}")
        self.patch_size = [int(p) for p in self.patch_size]
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive integers, got {self.patch_size}")
        if not self.channels:
            raise ValueError("a model needs at least one input channel")

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def intensity_transform(self, keys: str | list[str] = "image"):
        """The MONAI dictionary transform for the intensity normalisation."""
        from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged

        if self.intensity.kind == "ct_window":
            i = self.intensity
            return ScaleIntensityRanged(
                keys, a_min=i.a_min, a_max=i.a_max, b_min=i.b_min, b_max=i.b_max, clip=True
            )
        return NormalizeIntensityd(keys, nonzero=True, channel_wise=True)

    def geometry_transforms(self, keys: list[str], modes: list[str]) -> list:
        """MONAI dictionary transforms for orientation and spacing (``modes`` per key)."""
        from monai.transforms import Orientationd, Spacingd

        # Explicit RAS axis labels: our arrays are always RAS (see data.volume), and passing them
        # avoids depending on MONAI's changing default.
        transforms: list = [
            Orientationd(keys, axcodes=self.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S")))
        ]
        if self.spacing is not None:
            transforms.append(Spacingd(keys, pixdim=self.spacing, mode=modes))
        return transforms

    def bundle_preprocessing(self, key: str = "image") -> list[dict[str, Any]]:
        """The same steps as MONAI bundle config items (``_target_`` dicts) for ``inference.json``,
        after loading. Only MONAI transforms, no ``$`` expressions: safe to load untrusted."""
        items: list[dict[str, Any]] = [
            {"_target_": "EnsureChannelFirstd", "keys": key},
            {"_target_": "Orientationd", "keys": key, "axcodes": self.orientation},
        ]
        if self.spacing is not None:
            items.append(
                {"_target_": "Spacingd", "keys": key, "pixdim": list(self.spacing), "mode": "bilinear"}
            )
        if self.intensity.kind == "ct_window":
            i = self.intensity
            items.append(
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": key,
                    "a_min": i.a_min,
                    "a_max": i.a_max,
                    "b_min": i.b_min,
                    "b_max": i.b_max,
                    "clip": True,
                }
            )
        else:
            items.append(
                {"_target_": "NormalizeIntensityd", "keys": key, "nonzero": True, "channel_wise": True}
            )
        items.append({"_target_": "EnsureTyped", "keys": key})
        return items
