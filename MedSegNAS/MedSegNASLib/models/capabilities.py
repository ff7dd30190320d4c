"""The components an untrusted bundle config may build, each with the arguments it may take.

Whole packages are too coarse an allow-list: ``monai.transforms`` holds savers and
``monai.networks.nets`` networks that download weights in their constructor. This module lists,
one by one, the components an *inference* config needs (networks, geometric and intensity
transforms, inferers, post-processing, the reader/writer steps the engine drives), and for each
the arguments it may take with their types and ranges. Everything else is refused, and so is
every argument not listed (``pretrained``, ``pretrained_url``, ``output_dir`` of a network,
``select_fn``, ``post_func``...).

Checked twice: statically on the raw config (literal values; :func:`argument_problems` with
``resolved=False``) and again on the resolved values just before the component is built
(``resolved=True``), so a value computed by a ``$`` expression or taken from an ``@`` reference
is held to the same rule.

Three kinds of components get special treatment:

* **Engine I/O steps** (``LoadImage(d)``, ``SaveImage(d)``): listed so that published configs
  pass, but never built as MONAI objects: :func:`build_engine_io_step` returns an inert stand-in.
  The engine reads its own input and writes its own output; a stand-in loader refuses to open a
  path, a stand-in saver writes nothing.
* **Networks** (subclasses of ``torch.nn.Module``): built first on the ``meta`` device (no memory)
  to count parameters and estimate activation memory (:func:`network_size_problem`), and refused
  above :data:`MAX_NETWORK_PARAMETERS` / :data:`MAX_ACTIVATION_BYTES` before real weights exist.
* ``Lambda(d)``: its ``func`` must be a lambda built by the safe interpreter
  (:class:`~.safe_expr.SafeLambda`), e.g. BraTS's ``$lambda x: torch.where(...)``.

The argument names follow the MONAI versions of :data:`SUPPORTED_MONAI` (a test checks them
against the installed signatures).
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .network_size import NetworkSize

__all__ = [
    "SUPPORTED_MONAI",
    "SUPPORTED_TORCH",
    "MAX_NETWORK_PARAMETERS",
    "MAX_ACTIVATION_BYTES",
    "ComponentRule",
    "COMPONENTS",
    "ENGINE_IO",
    "component_rule",
    "argument_problems",
    "network_size",
    "network_size_problem",
    "build_engine_io_step",
    "EngineIOStep",
]

#: Versions the safety argument was made for: argument names of the components below, MONAI
#: constructors that download (none of the allowed ones does with the allowed arguments), and
#: ``torch.load(weights_only=True)`` with ``torch.serialization.safe_globals`` (torch >= 2.5).
#: Kept in step with ``pyproject.toml`` (a test checks the installed versions are inside).
SUPPORTED_MONAI = ">=1.5,<1.7"
SUPPORTED_TORCH = ">=2.5,<2.14"

#: Most parameters a network of an untrusted bundle may have (2 GB of float32 weights).
MAX_NETWORK_PARAMETERS = 500_000_000
#: Most bytes the outputs of all layers of one forward pass (one sliding-window batch) may take,
#: estimated on the meta device. A sum over layers, so an upper bound of the peak.
MAX_ACTIVATION_BYTES = 64 * 1024**3
#: Input patch used for the activation estimate when the config states none (voxels).
DEFAULT_PATCH = (96, 96, 96)

_NON_ARGUMENTS = ("_target_", "_mode_", "_disabled_", "_requires_", "_desc_")
_REFERENCE_PREFIXES = ("@", "$", "%")


# ------------------------------------------------------------------------------- value rules


class Rule:
    """A check of one argument value; :meth:`problem` says what is wrong, or None."""

    text = "a value"

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError

    def __or__(self, other: Rule) -> Rule:
        return AnyOf(self, other)


@dataclass(frozen=True)
class AnyOf(Rule):
    options: tuple[Rule, ...]

    def __init__(self, *options: Rule):
        object.__setattr__(self, "options", options)

    @property
    def text(self) -> str:  # type: ignore[override]
        return " or ".join(o.text for o in self.options)

    def problem(self, value: Any) -> str | None:
        found = [o.problem(value) for o in self.options]
        return None if any(p is None for p in found) else f"must be {self.text}"


class NoneValue(Rule):
    text = "None"

    def problem(self, value: Any) -> str | None:
        return None if value is None else "must be None"


class Bool(Rule):
    text = "true or false"

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else f"must be {self.text}"


@dataclass(frozen=True)
class Int(Rule):
    low: int
    high: int

    @property
    def text(self) -> str:  # type: ignore[override]
        return f"a whole number in [{self.low}, {self.high}]"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not _is_integer(value):
            return f"must be {self.text}"
        return None if self.low <= int(value) <= self.high else f"must be {self.text}"


@dataclass(frozen=True)
class Float(Rule):
    low: float
    high: float

    @property
    def text(self) -> str:  # type: ignore[override]
        return f"a number in [{self.low:g}, {self.high:g}]"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not (_is_integer(value) or _is_real(value)):
            return f"must be {self.text}"
        number = float(value)
        ok = math.isfinite(number) and self.low <= number <= self.high
        return None if ok else f"must be {self.text}"


@dataclass(frozen=True)
class Choice(Rule):
    values: tuple[str, ...]

    def __init__(self, *values: str):
        object.__setattr__(self, "values", values)

    @property
    def text(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(repr(v) for v in self.values)

    def problem(self, value: Any) -> str | None:
        value = getattr(value, "value", value)  # MONAI StrEnum members
        if isinstance(value, str) and value.lower() in {v.lower() for v in self.values}:
            return None
        return f"must be {self.text}"


@dataclass(frozen=True)
class Name(Rule):
    """A short name (dictionary key, meta-dict postfix): letters, digits, ``_ - .``, at most 64 chars."""

    text = "a short name"

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", value) is not None
        return None if ok else f"must be {self.text} (letters, digits, _ - .)"


@dataclass(frozen=True)
class Pattern(Rule):
    regex: str
    text: str = "a string"  # type: ignore[misc]

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, str) and re.fullmatch(self.regex, value) is not None
        return None if ok else f"must be {self.text}"


@dataclass(frozen=True)
class Seq(Rule):
    item: Rule
    min_len: int = 0
    max_len: int = 16

    @property
    def text(self) -> str:  # type: ignore[override]
        return f"a list of {self.min_len}-{self.max_len} items, each {self.item.text}"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            if _is_array(value) and value.ndim == 1:
                value = value.tolist()
            else:
                return f"must be {self.text}"
        if not self.min_len <= len(value) <= self.max_len:
            return f"must be {self.text}"
        for index, item in enumerate(value):
            found = self.item.problem(item)
            if found:
                return f"item {index} {found}"
        return None


def OneOrSeq(item: Rule, max_len: int = 16) -> Rule:  # noqa: N802 (reads as a rule type)
    """The value itself, or a list of such values (per key / per axis)."""
    return AnyOf(item, Seq(item, 1, max_len))


class DType(Rule):
    text = "a numpy or torch data type"
    names = frozenset(
        "bool uint8 int8 int16 int32 int64 uint16 uint32 uint64 float16 float32 float64 half float double "
        "bfloat16 long int short".split()
    )

    def problem(self, value: Any) -> str | None:
        import numpy as np
        import torch

        if value is None or isinstance(value, torch.dtype):
            return None
        if isinstance(value, str):
            return (
                None
                if value.replace("torch.", "").replace("numpy.", "") in self.names
                else f"must be {self.text}"
            )
        if isinstance(value, type) and issubclass(value, np.generic) and value is not np.object_:
            return None
        if isinstance(value, np.dtype) and value.kind != "O":
            return None
        return f"must be {self.text}"


class Device(Rule):
    text = "a device ('cpu', 'cuda', 'cuda:N')"

    def problem(self, value: Any) -> str | None:
        import torch

        if value is None or isinstance(value, torch.device):
            return None
        ok = isinstance(value, str) and re.fullmatch(r"(cpu|cuda|mps)(:\d{1,2})?", value) is not None
        return None if ok else f"must be {self.text}"


@dataclass(frozen=True)
class ArrayLike(Rule):
    """Numbers as a nested list, numpy array or tensor (DiNTS codes), at most ``max_items`` of them."""

    max_items: int = 100_000
    text: str = "an array of numbers"  # type: ignore[misc]

    def problem(self, value: Any) -> str | None:
        import numpy as np

        try:
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        except (TypeError, ValueError):
            return f"must be {self.text}"
        if array.dtype.kind not in "biuf" or array.size > self.max_items:
            return f"must be {self.text} (at most {self.max_items})"
        return None


@dataclass(frozen=True)
class Built(Rule):
    """An object the safe parser built from an allowed component (by class name) or a stand-in."""

    names: tuple[str, ...]
    text: str = "a component built by this config"  # type: ignore[misc]

    def problem(self, value: Any) -> str | None:
        if isinstance(value, EngineIOStep):
            return None if "engine_io" in self.names else f"must be {self.text}"
        rule = COMPONENTS.get(type(value).__name__)
        if rule is None or _load(rule.path) is not type(value):
            return f"must be {self.text}"
        if "*" in self.names or type(value).__name__ in self.names:
            return None
        return f"must be {self.text} ({', '.join(self.names)})"


class Lambda(Rule):
    text = "a $lambda expression"

    def problem(self, value: Any) -> str | None:
        from .safe_expr import SafeLambda

        return None if isinstance(value, SafeLambda) else f"must be {self.text}"


@dataclass(frozen=True)
class LayerSpec(Rule):
    """An activation or norm layer as MONAI names it: ``"prelu"`` or ``["prelu", {"init": 0.2}]``."""

    text = "a layer name, or [name, {options}]"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str):
            return None if Name().problem(value) is None else f"must be {self.text}"
        if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
            options = value[1]
            if isinstance(options, Mapping) and len(options) <= 16:
                for key, item in options.items():
                    plain = item is None or isinstance(item, (bool, int, float, str))
                    if Name().problem(key) or not plain or (isinstance(item, str) and len(item) > 64):
                        return f"must be {self.text} with plain option values"
                return None
        return f"must be {self.text}"


def _is_integer(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (int, np.integer))


def _is_real(value: Any) -> bool:
    import numpy as np

    return isinstance(value, (float, np.floating))


def _is_array(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.ndarray)


# ---------------------------------------------------------------------------- components


@dataclass(frozen=True)
class ComponentRule:
    """One allowed component: where it lives, its arguments, and how it is treated.

    Attributes:
        path: the full import path of the class (``monai.networks.nets.UNet``).
        args: argument name -> rule; any other argument is refused.
        kind: ``"network"``, ``"transform"``, ``"inferer"``, ``"engine_io"`` or ``"other"``.
    """

    path: str
    args: Mapping[str, Rule] = field(default_factory=dict)
    kind: str = "transform"


KEYS = OneOrSeq(Name(), 16)
OPTIONAL_KEYS = KEYS | NoneValue()
FLAG = Bool()
FLAGS = OneOrSeq(Bool(), 16)
NUMBER = Float(-1e9, 1e9)
CHANNELS = Int(1, 64)
CLASSES = Int(1, 1024)
DIMS = Int(1, 3)
DROPOUT = Float(0.0, 1.0)
KERNEL = OneOrSeq(Int(1, 15), 3)
STRIDE = OneOrSeq(Int(1, 8), 3)
INTERPOLATION = Choice(
    "bilinear", "nearest", "bicubic", "trilinear", "area", "linear", "nearest-exact"
) | Int(0, 5)
PADDING = Choice(
    "border", "zeros", "reflection", "constant", "edge", "reflect", "replicate", "symmetric", "wrap"
)
DTYPE = DType()
DEVICE = Device()
COMMON_DICT = {"keys": KEYS, "allow_missing_keys": FLAG}
META = {"meta_keys": OPTIONAL_KEYS, "meta_key_postfix": Name()}

_N = "monai.networks.nets."
_T = "monai.transforms."

COMPONENTS: dict[str, ComponentRule] = {
    # ------------------------------------------------------------------ networks
    "UNet": ComponentRule(
        _N + "UNet",
        {
            "spatial_dims": DIMS,
            "in_channels": CHANNELS,
            "out_channels": CLASSES,
            "channels": Seq(Int(1, 4096), 2, 10),
            "strides": Seq(STRIDE, 1, 9),
            "kernel_size": KERNEL,
            "up_kernel_size": KERNEL,
            "num_res_units": Int(0, 16),
            "act": LayerSpec(),
            "norm": LayerSpec(),
            "dropout": DROPOUT,
            "bias": FLAG,
            "adn_ordering": Pattern(r"[AND]{0,3}", "letters of 'AND'"),
        },
        "network",
    ),
    "BasicUNet": ComponentRule(
        _N + "BasicUNet",
        {
            "spatial_dims": DIMS,
            "in_channels": CHANNELS,
            "out_channels": CLASSES,
            "features": Seq(Int(1, 4096), 6, 6),
            "act": LayerSpec(),
            "norm": LayerSpec(),
            "bias": FLAG,
            "dropout": DROPOUT,
            "upsample": Choice("deconv", "pixelshuffle", "nontrainable"),
        },
        "network",
    ),
    "SegResNet": ComponentRule(
        _N + "SegResNet",
        {
            "spatial_dims": DIMS,
            "init_filters": Int(1, 1024),
            "in_channels": CHANNELS,
            "out_channels": CLASSES,
            "dropout_prob": DROPOUT | NoneValue(),
            "act": LayerSpec(),
            "norm": LayerSpec(),
            "norm_name": Choice("", "batch", "instance", "group", "layer"),
            "num_groups": Int(1, 1024),
            "use_conv_final": FLAG,
            "blocks_down": Seq(Int(0, 32), 1, 8),
            "blocks_up": Seq(Int(0, 32), 0, 8),
            "upsample_mode": Choice("deconv", "nontrainable", "pixelshuffle"),
        },
        "network",
    ),
    "SwinUNETR": ComponentRule(
        _N + "SwinUNETR",
        {
            "img_size": OneOrSeq(Int(1, 1024), 3),  # deprecated in MONAI 1.5, still accepted
            "in_channels": CHANNELS,
            "out_channels": CLASSES,
            "patch_size": Int(1, 8),
            "depths": Seq(Int(1, 32), 1, 8),
            "num_heads": Seq(Int(1, 64), 1, 8),
            "window_size": OneOrSeq(Int(1, 32), 3),
            "qkv_bias": FLAG,
            "mlp_ratio": Float(0.25, 16.0),
            "feature_size": Int(1, 1024),
            "norm_name": LayerSpec(),
            "drop_rate": DROPOUT,
            "attn_drop_rate": DROPOUT,
            "dropout_path_rate": DROPOUT,
            "normalize": FLAG,
            "patch_norm": FLAG,
            "use_checkpoint": FLAG,
            "spatial_dims": Int(2, 3),
            "downsample": Choice("merging", "mergingv2"),
            "use_v2": FLAG,
        },
        "network",
    ),
    "UNETR": ComponentRule(
        _N + "UNETR",
        {
            "in_channels": CHANNELS,
            "out_channels": CLASSES,
            "img_size": OneOrSeq(Int(1, 1024), 3),
            "feature_size": Int(1, 1024),
            "hidden_size": Int(1, 4096),
            "mlp_dim": Int(1, 16384),
            "num_heads": Int(1, 64),
            "proj_type": Choice("conv", "perceptron"),
            "norm_name": LayerSpec(),
            "conv_block": FLAG,
            "res_block": FLAG,
            "dropout_rate": DROPOUT,
            "spatial_dims": Int(2, 3),
            "qkv_bias": FLAG,
        },
        "network",
    ),
    "DynUNet": ComponentRule(
        _N + "DynUNet",
        {
            "spatial_dims": DIMS,
            "in_channels": CHANNELS,
            "out_channels": CLASSES,
            "kernel_size": Seq(KERNEL, 1, 10),
            "strides": Seq(STRIDE, 1, 10),
            "upsample_kernel_size": Seq(STRIDE, 1, 9),
            "filters": Seq(Int(1, 4096), 1, 10) | NoneValue(),
            "dropout": DROPOUT | LayerSpec() | NoneValue(),
            "norm_name": LayerSpec(),
            "act_name": LayerSpec(),
            "deep_supervision": FLAG,
            "deep_supr_num": Int(1, 8),
            "res_block": FLAG,
            "trans_bias": FLAG,
        },
        "network",
    ),
    "TopologyInstance": ComponentRule(
        _N + "TopologyInstance",
        {
            "arch_code": Seq(ArrayLike(), 2, 2) | NoneValue(),
            "channel_mul": Float(0.0625, 16.0),
            "num_blocks": Int(1, 64),
            "num_depths": Int(1, 6),
            "spatial_dims": Int(2, 3),
            "act_name": LayerSpec(),
            "norm_name": LayerSpec(),
            "use_downsample": FLAG,
            "device": DEVICE,
        },
        "network",
    ),
    "DiNTS": ComponentRule(
        _N + "DiNTS",
        {
            "dints_space": Built(("TopologyInstance",)),
            "in_channels": CHANNELS,
            "num_classes": CLASSES,
            "act_name": LayerSpec(),
            "norm_name": LayerSpec(),
            "spatial_dims": Int(2, 3),
            "use_downsample": FLAG,
            "node_a": ArrayLike(),
        },
        "network",
    ),
    # ---------------------------------------------------------------- transforms
    "Compose": ComponentRule(
        _T + "Compose",
        {
            "transforms": Seq(Built(("*", "engine_io")), 0, 64) | Built(("*", "engine_io")),
            "map_items": FLAG,
            "unpack_items": FLAG,
            "log_stats": FLAG,
            "lazy": FLAG | NoneValue(),
        },
    ),
    "LoadImaged": ComponentRule(
        _T + "LoadImaged",
        {
            **COMMON_DICT,
            **META,
            "reader": Choice(
                "ITKReader", "NibabelReader", "NumpyReader", "PILReader", "PydicomReader", "NrrdReader"
            )
            | NoneValue(),
            "dtype": DTYPE,
            "overwriting": FLAG,
            "image_only": FLAG,
            "ensure_channel_first": FLAG,
            "simple_keys": FLAG,
            "prune_meta_pattern": Pattern(r"[^\n]{0,200}", "a short pattern") | NoneValue(),
            "prune_meta_sep": Pattern(r".{1,4}", "a separator"),
            "expanduser": FLAG,
        },
        "engine_io",
    ),
    "SaveImaged": ComponentRule(
        _T + "SaveImaged",
        {
            **COMMON_DICT,
            **META,
            # Never used: the stand-in writes nothing; the engine writes its own output.
            "output_dir": Pattern(r"[^\n]{0,4096}", "a path"),
            "output_postfix": Pattern(r"[^\n]{0,64}", "a suffix"),
            "output_ext": Pattern(r"[.\w]{0,16}", "a file extension"),
            "resample": FLAG,
            "mode": INTERPOLATION,
            "padding_mode": PADDING,
            "scale": Int(0, 65535) | NoneValue(),
            "dtype": DTYPE,
            "output_dtype": DTYPE,
            "squeeze_end_dims": FLAG,
            "data_root_dir": Pattern(r"[^\n]{0,4096}", "a path"),
            "separate_folder": FLAG,
            "print_log": FLAG,
            "output_format": Pattern(r"\w{0,16}", "a format name"),
            "writer": Choice("ITKWriter", "NibabelWriter", "PILWriter") | NoneValue(),
            "savepath_in_metadict": FLAG,
        },
        "engine_io",
    ),
    "EnsureChannelFirstd": ComponentRule(
        _T + "EnsureChannelFirstd",
        {**COMMON_DICT, "strict_check": FLAG, "channel_dim": Int(-5, 5) | Choice("no_channel") | NoneValue()},
    ),
    "Orientationd": ComponentRule(
        _T + "Orientationd",
        {
            **COMMON_DICT,
            "axcodes": Pattern(r"[LRAPSIlrapsi]{1,3}", "axis codes such as 'RAS'") | NoneValue(),
            "as_closest_canonical": FLAG,
            "lazy": FLAG,
        },
    ),
    "Spacingd": ComponentRule(
        _T + "Spacingd",
        {
            **COMMON_DICT,
            "pixdim": OneOrSeq(Float(0.05, 100.0), 3),
            "diagonal": FLAG,
            "mode": OneOrSeq(INTERPOLATION),
            "padding_mode": OneOrSeq(PADDING),
            "align_corners": FLAGS,
            "dtype": OneOrSeq(DTYPE),
            "scale_extent": FLAG,
            "recompute_affine": FLAG,
            "min_pixdim": OneOrSeq(Float(0.05, 100.0), 3) | NoneValue(),
            "max_pixdim": OneOrSeq(Float(0.05, 100.0), 3) | NoneValue(),
            "ensure_same_shape": FLAG,
            "lazy": FLAG,
        },
    ),
    "ScaleIntensityRanged": ComponentRule(
        _T + "ScaleIntensityRanged",
        {
            **COMMON_DICT,
            "a_min": NUMBER,
            "a_max": NUMBER,
            "b_min": NUMBER | NoneValue(),
            "b_max": NUMBER | NoneValue(),
            "clip": FLAG,
            "dtype": DTYPE,
        },
    ),
    "ScaleIntensityd": ComponentRule(
        _T + "ScaleIntensityd",
        {
            **COMMON_DICT,
            "minv": NUMBER | NoneValue(),
            "maxv": NUMBER | NoneValue(),
            "factor": NUMBER | NoneValue(),
            "channel_wise": FLAG,
            "dtype": DTYPE,
        },
    ),
    "NormalizeIntensityd": ComponentRule(
        _T + "NormalizeIntensityd",
        {
            **COMMON_DICT,
            "subtrahend": OneOrSeq(NUMBER, 64) | NoneValue(),
            "divisor": OneOrSeq(NUMBER, 64) | NoneValue(),
            "nonzero": FLAG,
            "channel_wise": FLAG,
            "dtype": DTYPE,
        },
    ),
    "ThresholdIntensityd": ComponentRule(
        _T + "ThresholdIntensityd", {**COMMON_DICT, "threshold": NUMBER, "above": FLAG, "cval": NUMBER}
    ),
    "ShiftIntensityd": ComponentRule(_T + "ShiftIntensityd", {**COMMON_DICT, "offset": NUMBER, "safe": FLAG}),
    "EnsureTyped": ComponentRule(
        _T + "EnsureTyped",
        {
            **COMMON_DICT,
            "data_type": Choice("tensor", "numpy"),
            "dtype": OneOrSeq(DTYPE),
            "device": DEVICE,
            "wrap_sequence": FLAG,
            "track_meta": FLAG | NoneValue(),
        },
    ),
    "CastToTyped": ComponentRule(_T + "CastToTyped", {**COMMON_DICT, "dtype": OneOrSeq(DTYPE)}),
    "CropForegroundd": ComponentRule(
        _T + "CropForegroundd",
        {
            **COMMON_DICT,
            "source_key": Name(),
            "channel_indices": OneOrSeq(Int(0, 64)) | NoneValue(),
            "margin": OneOrSeq(Int(0, 512), 3),
            "allow_smaller": FLAG,
            "k_divisible": OneOrSeq(Int(1, 512), 3),
            "mode": OneOrSeq(
                Choice(
                    "constant",
                    "edge",
                    "minimum",
                    "maximum",
                    "mean",
                    "median",
                    "reflect",
                    "symmetric",
                    "wrap",
                    "empty",
                )
            ),
            "start_coord_key": Name() | NoneValue(),
            "end_coord_key": Name() | NoneValue(),
            "lazy": FLAG,
        },
    ),
    "Resized": ComponentRule(
        _T + "Resized",
        {
            **COMMON_DICT,
            "spatial_size": OneOrSeq(Int(-1, 1024), 3),
            "size_mode": Choice("all", "longest"),
            "mode": OneOrSeq(INTERPOLATION),
            "align_corners": OneOrSeq(FLAG | NoneValue()),
            "anti_aliasing": FLAGS,
            "dtype": OneOrSeq(DTYPE),
            "lazy": FLAG,
        },
    ),
    "Identityd": ComponentRule(_T + "Identityd", dict(COMMON_DICT)),
    # ------------------------------------------------------------- post-processing
    "Activationsd": ComponentRule(
        _T + "Activationsd",
        {**COMMON_DICT, "sigmoid": FLAGS, "softmax": FLAGS, "other": Lambda() | NoneValue()},
    ),
    "AsDiscreted": ComponentRule(
        _T + "AsDiscreted",
        {
            **COMMON_DICT,
            "argmax": FLAGS,
            "to_onehot": OneOrSeq(Int(1, 1024) | NoneValue()) | NoneValue(),
            "threshold": OneOrSeq(NUMBER | NoneValue()) | NoneValue(),
            "rounding": Choice("torchrounding") | NoneValue(),
            "dim": Int(-5, 5),
            "keepdim": FLAG,
            "dtype": DTYPE,
        },
    ),
    "KeepLargestConnectedComponentd": ComponentRule(
        _T + "KeepLargestConnectedComponentd",
        {
            **COMMON_DICT,
            "applied_labels": OneOrSeq(Int(0, 1024), 1024) | NoneValue(),
            "is_onehot": FLAG | NoneValue(),
            "independent": FLAG,
            "connectivity": Int(1, 3) | NoneValue(),
            "num_components": Int(1, 64),
        },
    ),
    "Invertd": ComponentRule(
        _T + "Invertd",
        {
            **COMMON_DICT,
            "transform": Built(("Compose", "*")),
            "orig_keys": OPTIONAL_KEYS,
            "meta_keys": OPTIONAL_KEYS,
            "orig_meta_keys": OPTIONAL_KEYS,
            "meta_key_postfix": Name(),
            "nearest_interp": FLAGS,
            "to_tensor": FLAGS,
            "device": OneOrSeq(DEVICE),
        },
    ),
    "Lambdad": ComponentRule(
        _T + "Lambdad", {**COMMON_DICT, "func": Lambda(), "track_meta": FLAG, "overwrite": FLAG | Name()}
    ),
    # --------------------------------------------- interactive (DeepEdit) guidance
    "AddGuidanceFromPointsDeepEditd": ComponentRule(
        "monai.apps.deepedit.transforms.AddGuidanceFromPointsDeepEditd",
        {
            "ref_image": Name(),
            "guidance": Name(),
            "label_names": NoneValue() | Built(("never",)),  # replaced below by a mapping rule
            **META,
        },
    ),
    "ResizeGuidanceMultipleLabelDeepEditd": ComponentRule(
        "monai.apps.deepedit.transforms.ResizeGuidanceMultipleLabelDeepEditd",
        {"guidance": Name(), "ref_image": Name()},
    ),
    "AddGuidanceSignalDeepEditd": ComponentRule(
        "monai.apps.deepedit.transforms.AddGuidanceSignalDeepEditd",
        {**COMMON_DICT, "guidance": Name(), "sigma": Int(0, 100), "number_intensity_ch": Int(1, 16)},
    ),
    # ---------------------------------------------- interactive (VISTA3D) prompts
    # The published VISTA3D bundle builds its network with this MONAI factory; only the
    # interactive session builds it (its point prompts need no bundle code; see
    # MedSegNASLib.interactive.vista). Bounded: 218 million parameters at the published 48.
    "vista3d132": ComponentRule(
        _N + "vista3d132", {"encoder_embed_dim": Int(1, 256), "in_channels": CHANNELS}, "network"
    ),
    "VistaPostTransformd": ComponentRule(
        "monai.apps.vista3d.transforms.VistaPostTransformd", dict(COMMON_DICT)
    ),
    # ------------------------------------------------------------------ inferers
    "SimpleInferer": ComponentRule("monai.inferers.SimpleInferer", {}, "inferer"),
    "SlidingWindowInferer": ComponentRule(
        "monai.inferers.SlidingWindowInferer",
        {
            "roi_size": OneOrSeq(Int(-1, 1024), 3),
            "sw_batch_size": Int(1, 64),
            # each window overlap of f multiplies the windows by 1/(1-f) per axis: 0.8 -> 125x
            "overlap": OneOrSeq(Float(0.0, 0.8), 3),
            "mode": Choice("constant", "gaussian"),
            "sigma_scale": OneOrSeq(Float(0.001, 10.0), 3),
            "padding_mode": Choice("constant", "reflect", "replicate", "circular"),
            "cval": NUMBER,
            "sw_device": DEVICE,
            "device": DEVICE,
            "progress": FLAG,
            "cache_roi_weight_map": FLAG,
            "cpu_thresh": Int(0, 2**40) | NoneValue(),
            "buffer_steps": Int(1, 64) | NoneValue(),
            "buffer_dim": Int(-3, 3),
            "with_coord": FLAG,
        },
        "inferer",
    ),
    "torch.device": ComponentRule(
        "torch.device", {"type": Choice("cpu", "cuda", "mps"), "index": Int(0, 63) | NoneValue()}, "other"
    ),
}


@dataclass(frozen=True)
class _LabelNames(Rule):
    """DeepEdit's ``label_names``: label name -> value, at most 256 of them."""

    text = "a mapping of label name -> whole number"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, Mapping) and len(value) <= 256:
            if all(Name().problem(k) is None and Int(0, 1024).problem(v) is None for k, v in value.items()):
                return None
        return f"must be {self.text}"


COMPONENTS["AddGuidanceFromPointsDeepEditd"] = ComponentRule(
    COMPONENTS["AddGuidanceFromPointsDeepEditd"].path,
    {"ref_image": Name(), "guidance": Name(), "label_names": _LabelNames() | NoneValue(), **META},
)


@dataclass(frozen=True)
class _IntLists(Rule):
    """VISTA3D's ``subclass``: label value (a string) -> list of label values, at most 256 entries."""

    text = "a mapping of label value -> list of whole numbers"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, Mapping) and len(value) <= 256:
            values = Seq(Int(0, 1024), 0, 1024)
            if all(str(k).isdigit() and values.problem(v) is None for k, v in value.items()):
                return None
        return f"must be {self.text}"


@dataclass(frozen=True)
class _ChannelNames(Rule):
    """VISTA3D's ``labels_dict``: label value (a string) -> name, as ``channel_def`` of the metadata."""

    text = "a mapping of label value -> name"

    def problem(self, value: Any) -> str | None:
        if isinstance(value, Mapping) and len(value) <= 1024:
            if all(
                str(k).isdigit() and isinstance(v, str) and 0 < len(v) <= 200 and "\n" not in v
                for k, v in value.items()
            ):
                return None
        return f"must be {self.text}"


COMPONENTS["VistaPreTransformd"] = ComponentRule(
    "monai.apps.vista3d.transforms.VistaPreTransformd",
    {
        **COMMON_DICT,
        "special_index": Seq(Int(0, 1024), 0, 1024),
        "labels_dict": _ChannelNames() | NoneValue(),
        "subclass": _IntLists() | NoneValue(),
    },
)


@functools.cache
def _load(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


#: Dictionary transforms that also have an array version with the same (non-key) arguments.
_ARRAY_VERSIONS = (
    "LoadImaged",
    "SaveImaged",
    "EnsureChannelFirstd",
    "Orientationd",
    "Spacingd",
    "ScaleIntensityRanged",
    "ScaleIntensityd",
    "NormalizeIntensityd",
    "ThresholdIntensityd",
    "ShiftIntensityd",
    "EnsureTyped",
    "CastToTyped",
    "CropForegroundd",
    "Resized",
    "Activationsd",
    "AsDiscreted",
    "KeepLargestConnectedComponentd",
    "Lambdad",
    "Identityd",
)
_DICT_ONLY_ARGS = {"keys", "allow_missing_keys", "meta_keys", "meta_key_postfix", "source_key", "orig_keys"}


def _add_array_versions() -> None:
    """``Spacing`` from ``Spacingd``: the same rules for the arguments the array version takes."""
    import inspect

    for dict_name in _ARRAY_VERSIONS:
        rule = COMPONENTS[dict_name]
        array_name = dict_name[:-1]
        path = rule.path[: -len(dict_name)] + array_name
        array_class = _load(path)
        if array_class is None:
            continue
        takes = inspect.signature(array_class).parameters
        args = {k: v for k, v in rule.args.items() if k not in _DICT_ONLY_ARGS and k in takes}
        if array_name == "Lambda":
            args = {"func": Lambda(), "track_meta": FLAG}
        COMPONENTS[array_name] = ComponentRule(path, args, rule.kind)


_add_array_versions()

#: Engine I/O steps by class name (built as inert stand-ins, never as MONAI objects).
ENGINE_IO = frozenset(name for name, rule in COMPONENTS.items() if rule.kind == "engine_io")


@functools.cache
def _by_object() -> dict[int, tuple[str, ComponentRule]]:
    table = {}
    for name, rule in COMPONENTS.items():
        obj = _load(rule.path)
        if obj is not None:
            table[id(obj)] = (name, rule)
    return table


def component_rule(obj: Any) -> tuple[str, ComponentRule] | None:
    """(name, rule) of an allowed component class, or None when ``obj`` is not on the list."""
    return _by_object().get(id(obj))


def _unresolved(value: Any) -> bool:
    """The raw config value holds an ``@`` reference, ``$`` expression or ``%`` macro somewhere."""
    if isinstance(value, str):
        return value.startswith(_REFERENCE_PREFIXES)
    if isinstance(value, Mapping):  # a nested component is built (and checked) on its own
        return "_target_" in value or any(_unresolved(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_unresolved(v) for v in value)
    return False


def argument_problems(
    name: str, rule: ComponentRule, args: Mapping[str, Any], *, resolved: bool
) -> list[str]:
    """Why the arguments of component ``name`` are refused; empty when every one passes its rule.

    Args:
        args: the arguments without ``_target_`` and the other ``_x_`` keys.
        resolved: values are the built ones; else raw config values, and those holding a
            reference or expression are left for the check at build time.
    """
    problems = []
    for key, value in args.items():
        if key in _NON_ARGUMENTS:
            continue
        check = rule.args.get(key)
        if check is None:
            problems.append(f"argument '{key}' of {name} is not on the allow-list")
            continue
        if not resolved and _unresolved(value):
            continue
        found = check.problem(value)
        if found:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            problems.append(f"argument '{key}' of {name} {found} (got {shown})")
    return problems


# ------------------------------------------------------------------------------- networks


#: Cache kind (folder under the user cache) of :func:`network_size` results.
SIZE_CHECK_CACHE = "network-size-check"
#: Lookups of that cache in this process (``hit``/``miss``; a ``skip`` when the arguments are
#: not plain JSON values and the check runs uncached), for logs and tests.
SIZE_CHECK_CACHE_STATS = {"hit": 0, "miss": 0, "skip": 0}
#: Seconds this process spent on size checks whose verdict it stored in that cache. A later run of
#: the same bundle reads the verdict instead, so ``segment --plan`` leaves them out of the start-up
#: it predicts for the run (up to a few seconds on a loaded machine: the check's first meta
#: forward pass imports torch's decompositions).
SIZE_CHECK_STORED_SECONDS = {"seconds": 0.0}


def network_size_problem(
    name: str,
    factory: Callable[..., Any],
    args: Mapping[str, Any],
    *,
    in_channels: int | None,
    patch: Sequence[int] | None,
    batch: int = 1,
) -> str | None:
    """Build the network on the ``meta`` device (no memory) and check its size; None when it fits.

    Args:
        factory: the network class; args: its checked arguments.
        in_channels, patch, batch: the input of one forward pass (channels, spatial voxels,
            windows per batch) for the activation estimate; patch None -> :data:`DEFAULT_PATCH`.

    Returns:
        The problem, naming the limit (:data:`MAX_NETWORK_PARAMETERS`, :data:`MAX_ACTIVATION_BYTES`).
    """
    return network_size(name, factory, args, in_channels=in_channels, patch=patch, batch=batch).problem


def _size_cache_key(
    name: str, factory: Callable[..., Any], args: Mapping[str, Any], channels: int, spatial: tuple, batch: int
) -> str | None:
    """The cache key of a size check: the component, its checked arguments (plain JSON values
    only, else None: not cached), the forward pass, the limits and the library versions. Any
    change to the network a config builds (a tampered bundle) gives another key."""
    import json

    from ..user_cache import cache_key

    try:
        arguments = json.dumps(dict(args), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    factory_name = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', '?')}"
    return cache_key(
        "network-size",
        name,
        factory_name,
        arguments,
        channels,
        list(spatial),
        batch,
        MAX_NETWORK_PARAMETERS,
        MAX_ACTIVATION_BYTES,
    )


def network_size(
    name: str,
    factory: Callable[..., Any],
    args: Mapping[str, Any],
    *,
    in_channels: int | None,
    patch: Sequence[int] | None,
    batch: int = 1,
) -> NetworkSize:
    """:func:`network_size_problem` with its figures, remembered across runs.

    The dry build's verdict is a function of the component, its arguments and the forward pass
    only (the weights play no part: they are loaded later, ``weights_only``, and must fit the
    built network's shapes exactly). It is stored in the user cache (:mod:`~MedSegNASLib.user_cache`)
    under a key of exactly those (and the limits and library versions), so a bundle opened
    again skips the meta forward pass (about 0.8 s: it imports torch's decompositions), and a
    bundle whose network definition changed in any way is checked afresh. An unreadable entry
    is checked afresh and rewritten.
    """
    import torch

    from ..user_cache import read_entry, write_entry

    spatial = tuple(int(s) for s in (patch or DEFAULT_PATCH))
    channels = int(in_channels or args.get("in_channels") or 1)
    batch = max(1, int(batch))
    key = _size_cache_key(name, factory, args, channels, spatial, batch)
    if key is None:
        SIZE_CHECK_CACHE_STATS["skip"] += 1
    else:
        entry = read_entry(SIZE_CHECK_CACHE, key)
        if entry is not None:
            try:
                found = NetworkSize(
                    entry["problem"] if entry["problem"] is None else str(entry["problem"]),
                    int(entry["parameters"]),
                    None if entry["activation_bytes"] is None else int(entry["activation_bytes"]),
                    batch,
                    spatial,
                )
            except (KeyError, TypeError, ValueError):
                found = None
            if found is not None:
                SIZE_CHECK_CACHE_STATS["hit"] += 1
                return found
        SIZE_CHECK_CACHE_STATS["miss"] += 1
    checking_since = time.perf_counter()

    def remember(found: NetworkSize) -> NetworkSize:
        if key is not None:
            SIZE_CHECK_STORED_SECONDS["seconds"] += time.perf_counter() - checking_since
            write_entry(
                SIZE_CHECK_CACHE,
                key,
                {
                    "problem": found.problem,
                    "parameters": found.parameters,
                    "activation_bytes": found.activation_bytes,
                },
            )
        return found

    with torch.device("meta"):
        try:
            network = factory(**args)
        except Exception:  # invalid combination: the real build reports it with MONAI's message
            return NetworkSize(None, 0, None, batch, spatial)  # not remembered: the build fails
    parameters = sum(p.numel() for p in network.parameters()) + sum(b.numel() for b in network.buffers())
    if parameters > MAX_NETWORK_PARAMETERS:
        return remember(
            NetworkSize(
                f"{name} would have {parameters:,} parameters, more than the limit of "
                f"{MAX_NETWORK_PARAMETERS:,} (MAX_NETWORK_PARAMETERS)",
                parameters,
                None,
                batch,
                spatial,
            )
        )
    total = 0

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        nonlocal total
        for item in output if isinstance(output, (list, tuple)) else [output]:
            if isinstance(item, torch.Tensor):
                total += item.numel() * item.element_size()

    hooks = [m.register_forward_hook(count) for m in network.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            network(torch.empty((batch, channels, *spatial), device="meta"))
    except Exception:
        # shapes the meta forward cannot follow; the parameter cap still holds
        return remember(NetworkSize(None, parameters, None, batch, spatial))
    finally:
        for hook in hooks:
            hook.remove()
    if total > MAX_ACTIVATION_BYTES:
        return remember(
            NetworkSize(
                f"{name} would need about {total / 1024**3:.1f} GiB of activations for a "
                f"{'x'.join(map(str, spatial))} patch, more than the limit of "
                f"{MAX_ACTIVATION_BYTES / 1024**3:.0f} GiB (MAX_ACTIVATION_BYTES)",
                parameters,
                total,
                batch,
                spatial,
            )
        )
    return remember(NetworkSize(None, parameters, total, batch, spatial))


# ------------------------------------------------------------------------------ engine I/O


class EngineIOStep:
    """Stand-in for a ``LoadImage(d)``/``SaveImage(d)`` step of an untrusted config.

    The engine reads its input and writes its output itself. A loader stand-in passes data that is
    already loaded through unchanged and refuses to open a path; a saver stand-in writes nothing
    and returns its input. The recorded ``args`` stay readable (``reader``, ``image_only``).
    """

    def __init__(self, name: str, args: Mapping[str, Any]):
        self.name = name
        self.args = dict(args)
        self.keys = args.get("keys")

    @property
    def loads(self) -> bool:
        return self.name.startswith("LoadImage")

    def __call__(self, data: Any, *_args: Any, **_kwargs: Any) -> Any:
        if self.loads:
            values = data.values() if isinstance(data, Mapping) else [data]
            if any(isinstance(v, (str, bytes)) or hasattr(v, "__fspath__") for v in values):
                from .safety import UnsafeConfigError

                raise UnsafeConfigError(
                    f"{self.name} of an untrusted bundle may not open files; the engine reads its own input"
                )
        return data

    def __repr__(self) -> str:
        return f"EngineIOStep({self.name})"


def build_engine_io_step(name: str, args: Mapping[str, Any]) -> EngineIOStep:
    """The inert stand-in for engine I/O component ``name`` (see :class:`EngineIOStep`)."""
    return EngineIOStep(name, args)
