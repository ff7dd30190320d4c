"""The DiNTS search space: grid size, width and the input-size rule, and the supernet built from it.

A DiNTS space (Liu et al., "DiNTS: Differentiable Neural Network Topology Search for 3D Medical
Image Segmentation", CVPR 2021) is a grid of ``num_blocks`` columns by ``num_depths`` resolution
levels. Between two node columns every level has a path to itself, one level up and one level
down: ``3 * num_depths - 2`` paths per block. Each path runs one cell operation (skip, 3x3x3 conv
or one of the pseudo-3D convs). The networks themselves are MONAI's
(:class:`monai.networks.nets.TopologySearch`, :class:`~monai.networks.nets.TopologyInstance`,
:class:`~monai.networks.nets.DiNTS`); this module only describes and builds them.

Level ``i`` has ``int(32 * 2**(i + use_downsample) * channel_mul)`` channels and works at
``1 / 2**(i + use_downsample)`` of the input resolution, so every input side must be divisible by
:attr:`SearchSpace.required_divisor`. MONAI only prints a hint about this; :meth:`check_patch_size`
turns it into an error that says which sizes would work.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from ..errors import MedSegNASError

__all__ = ["SearchSpace"]

#: Cell operations as shown to users, keyed by MONAI's names in ``Cell.OPS3D`` / ``Cell.OPS2D``.
#: Each op is act -> conv -> InstanceNorm; a P3D op is a (k,k,1) conv followed by a (1,1,k) conv.
_OP_LABELS: dict[str, str] = {
    "skip_connect": "skip",
    "conv_3x3x3": "conv 3x3x3",
    "conv_3x3x1": "P3D 3x3x1",
    "conv_3x1x3": "P3D 3x1x3",
    "conv_1x3x3": "P3D 1x3x3",
    "conv_3x3": "conv 3x3",
}

#: Most depths this project will decode: a block has 2**(3*depths - 2) - 1 path patterns
#: (1023 for 4 depths, 8191 for 5); beyond that the pattern graph is impractically large.
MAX_DEPTHS = 5


def _quiet() -> contextlib.AbstractContextManager:
    """Swallow MONAI's constructor print about patch sizes: :meth:`SearchSpace.check_patch_size` does it."""
    return contextlib.redirect_stdout(io.StringIO())


@dataclass(frozen=True)
class SearchSpace:
    """Shape of a DiNTS search space.

    Args:
        num_blocks: number of blocks (columns of the grid); published searches use 12.
        num_depths: number of resolution levels (rows); published searches use 4.
        channel_mul: width multiplier; level ``i`` has ``int(32 * 2**(i + use_downsample) * channel_mul)``
            channels. Searches use 0.5, the retrained network 1.0.
        use_downsample: the stem halves the input first, so the grid works at 1/2 ... 1/2**num_depths.
        spatial_dims: 3 for volumes (5 cell operations), 2 for images (2 operations).
    """

    num_blocks: int = 12
    num_depths: int = 4
    channel_mul: float = 0.5
    use_downsample: bool = True
    spatial_dims: int = 3

    #: Named spaces. ``tiny``: a CPU demo; one weight step (batch 1, 64^3, 2 classes) of its supernet
    #: takes about 2 s on 2 CPU cores. ``small``: a modest single-GPU search. ``full``: the published
    #: 12 x 4 space (DiNTS paper, MONAI tutorial and the pancreas model-zoo bundle).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"num_blocks": 4, "num_depths": 3, "channel_mul": 0.25, "use_downsample": True},
        "small": {"num_blocks": 8, "num_depths": 4, "channel_mul": 0.25, "use_downsample": True},
        "full": {"num_blocks": 12, "num_depths": 4, "channel_mul": 0.5, "use_downsample": True},
    }

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            problems.append(f"num_blocks must be an integer >= 1, got {self.num_blocks!r}")
        if (
            isinstance(self.num_depths, bool)
            or not isinstance(self.num_depths, int)
            or not 1 <= self.num_depths <= MAX_DEPTHS
        ):
            problems.append(f"num_depths must be an integer from 1 to {MAX_DEPTHS}, got {self.num_depths!r}")
        if (
            isinstance(self.channel_mul, bool)
            or not isinstance(self.channel_mul, (int, float))
            or not 32 * self.channel_mul >= 1
        ):
            problems.append(
                f"channel_mul must be a number >= 1/32 (at least one channel), got {self.channel_mul!r}"
            )
        if not isinstance(self.use_downsample, bool):
            problems.append(f"use_downsample must be true or false, got {self.use_downsample!r}")
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            problems.append(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if problems:
            raise MedSegNASError("invalid DiNTS search space: " + "; ".join(problems))

    # ----------------------------------------------------------------------------------- creation
    @classmethod
    def preset(cls, name: str) -> SearchSpace:
        """The named space ``"tiny"``, ``"small"`` or ``"full"`` (see :attr:`PRESETS`)."""
        try:
            return cls(**cls.PRESETS[name])
        except KeyError:
            raise MedSegNASError(
                f"unknown DiNTS search space preset {name!r}; choose one of {', '.join(cls.PRESETS)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict with every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Inverse of :meth:`to_dict`; missing fields take the defaults, unknown fields are an error."""
        if not isinstance(data, Mapping):
            raise MedSegNASError(f"a DiNTS search space must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedSegNASError(
                f"unknown DiNTS search space field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    # ----------------------------------------------------------------------------------- geometry
    @property
    def required_divisor(self) -> int:
        """Every input side must be a multiple of this: ``2**(num_depths + use_downsample)``."""
        return 2 ** (self.num_depths + int(self.use_downsample))

    @property
    def num_paths(self) -> int:
        """Paths per block: each level to itself, one up and one down (``3 * num_depths - 2``)."""
        return 3 * self.num_depths - 2

    @property
    def path_levels(self) -> tuple[tuple[int, int], ...]:
        """``(input level, output level)`` of each path, in MONAI's path order.

        For 4 depths: (0,0) (1,0) (0,1) (1,1) (2,1) (1,2) (2,2) (3,2) (2,3) (3,3); level 0 is the
        finest. Same as MONAI's ``arch_code2in`` / ``arch_code2out``.
        """
        return tuple(((i + 1) // 3 - 1 + (i + 1) % 3, (i + 1) // 3) for i in range(self.num_paths))

    @property
    def op_names(self) -> tuple[str, ...]:
        """Cell operation labels in MONAI's order; ``arch_code_c`` values index this tuple."""
        from monai.networks.nets.dints import Cell

        keys = Cell.OPS3D if self.spatial_dims == 3 else Cell.OPS2D
        return tuple(_OP_LABELS.get(key, key) for key in keys)

    def channels(self, level: int, channel_mul: float | None = None) -> int:
        """Feature channels at grid ``level`` (0 = finest) for ``channel_mul`` (default: this space's)."""
        mul = self.channel_mul if channel_mul is None else channel_mul
        return int(32 * 2 ** (level + int(self.use_downsample)) * mul)

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise :class:`MedSegNASError` unless every side of ``patch_size`` (voxels) is a multiple of
        :attr:`required_divisor`; the message names the offending axes and the nearest valid size."""
        sizes = tuple(patch_size)
        if len(sizes) != self.spatial_dims:
            raise MedSegNASError(
                f"patch size {sizes} has {len(sizes)} sides; this {self.spatial_dims}D DiNTS space needs "
                f"{self.spatial_dims}"
            )
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise MedSegNASError(f"patch size {sizes} must be positive integers (voxels)")
        div = self.required_divisor
        bad = [axis for axis, size in enumerate(sizes) if size % div]
        if not bad:
            return
        # Nearest multiple of the divisor per side, ties going up (a larger patch loses no context).
        nearest = tuple(max(div, ((s + div // 2) // div) * div) for s in sizes)
        axes = " and ".join(f"{axis} ({sizes[axis]})" for axis in bad)
        stem = "downsampling" if self.use_downsample else "no downsampling"
        raise MedSegNASError(
            f"patch size {sizes} is not divisible by {div} along {'axes' if len(bad) > 1 else 'axis'} {axes}: "
            f"DiNTS with {self.num_depths} depths and {stem} needs multiples of {div}; try {nearest}"
        )

    # ----------------------------------------------------------------------------------- networks
    def build_supernet(self, device: str = "cpu"):
        """The searchable space with every path and operation on.

        Returns:
            :class:`monai.networks.nets.TopologySearch` with architecture parameters ``log_alpha_a``
            (num_blocks, num_paths) and ``log_alpha_c`` (num_blocks, num_paths, num_ops) on ``device``.
        """
        from monai.networks.nets import TopologySearch

        with _quiet():
            return TopologySearch(
                channel_mul=self.channel_mul,
                num_blocks=self.num_blocks,
                num_depths=self.num_depths,
                spatial_dims=self.spatial_dims,
                use_downsample=self.use_downsample,
                device=device,
            )

    def build_search_network(self, in_channels: int, num_classes: int, device: str = "cpu"):
        """:class:`monai.networks.nets.DiNTS` around :meth:`build_supernet` (stem + head), with this
        space's ``use_downsample`` and ``spatial_dims`` passed on (DiNTS' own defaults would not follow
        a space without downsampling). Input (B, in_channels, *patch) -> logits (B, num_classes, *patch).
        """
        from monai.networks.nets import DiNTS

        return DiNTS(
            self.build_supernet(device=device),
            in_channels=in_channels,
            num_classes=num_classes,
            spatial_dims=self.spatial_dims,
            use_downsample=self.use_downsample,
        ).to(device)
