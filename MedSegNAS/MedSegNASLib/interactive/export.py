"""Interactive bundles: a MedSegNAS bundle whose metadata says which input channels are guidance.

``metadata.json`` of a bundle from ``medsegnas train --interactive``::

    "medsegnas": {"interactive": {
        "encoding": "deepedit",            # MONAI AddGuidanceSignalDeepEditd
        "image_channels": 1,               # input channels 0 .. image_channels-1: the image
        "label_names": {"background": 0, "liver": 1, ...},   # then one guidance channel each, in this order
        "sigma": 3,                        # Gaussian sigma of a click (voxels of the model grid)
        "negative_clicks": "background",   # a negative click on a label is a click on this channel
        "previous_mask": true              # then one channel per segment (label_names without
    }}                                     # background, same order): its current mask, 0/1

and ``network_data_format.inputs.image`` counts and names every channel (``guidance:liver``...,
``previous:liver``...). ``previous_mask`` is the mask-guidance input of RITM (Sofiiuk et al.,
"Reviving Iterative Training with Mask Guidance for Interactive Segmentation", ICIP 2022,
arXiv:2102.06583): each click refines the mask the user sees instead of starting again. Bundles
without it (older MedSegNAS bundles) take the image and the guidance channels only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..data.volume import LabelInfo
from .clicks import BACKGROUND
from .guidance import GUIDANCE_SIGMA

__all__ = [
    "interactive_label_names",
    "interactive_section",
    "declare_interactive",
    "extra_channels",
    "previous_mask_names",
]


def interactive_label_names(labels: Sequence[LabelInfo] | Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Guidance-channel order: every label by value, the value 0 named ``background`` as DeepEdit names it."""
    items = [
        (int(x["value"]), str(x["name"])) if isinstance(x, Mapping) else (x.value, x.name) for x in labels
    ]
    return {(BACKGROUND if value == 0 else name): value for value, name in sorted(items)}


def interactive_section(
    label_names: Mapping[str, int],
    image_channels: int,
    sigma: int = GUIDANCE_SIGMA,
    *,
    previous_mask: bool = False,
) -> dict[str, Any]:
    """The ``medsegnas.interactive`` metadata entry (``previous_mask``: the input has the previous-mask channels)."""
    section = {
        "encoding": "deepedit",
        "image_channels": int(image_channels),
        "label_names": dict(label_names),
        "sigma": int(sigma),
        "negative_clicks": BACKGROUND,
    }
    if previous_mask:
        section["previous_mask"] = True
    return section


def previous_mask_names(section: Mapping[str, Any]) -> list[str]:
    """The segments with a previous-mask input channel, in channel order (empty for a bundle without them)."""
    if not section.get("previous_mask"):
        return []
    return [name for name in section["label_names"] if name != BACKGROUND]


def extra_channels(section: Mapping[str, Any]) -> int:
    """Input channels after the image's: guidance (one per label) plus previous masks (one per segment)."""
    return len(section["label_names"]) + len(previous_mask_names(section))


def declare_interactive(bundle: str | Path, section: Mapping[str, Any]) -> None:
    """Make an exported bundle's ``network_data_format`` count the guidance channels (metadata rewritten atomically)."""
    path = Path(bundle) / "configs" / "metadata.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    image = metadata["network_data_format"]["inputs"]["image"]
    channels = int(section["image_channels"])
    image["num_channels"] = channels + extra_channels(section)
    definition = dict(image.get("channel_def") or {})
    names = [f"guidance:{name}" for name in section["label_names"]]
    names += [f"previous:{name}" for name in previous_mask_names(section)]
    for offset, name in enumerate(names):
        definition[str(channels + offset)] = name
    image["channel_def"] = definition
    metadata.setdefault("medsegnas", {})["interactive"] = dict(section)
    write_json_atomic(path, metadata)
