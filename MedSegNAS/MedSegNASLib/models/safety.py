"""Opening a model someone sent you must never run their code: errors and safe weight loading.

A PyTorch weights file is a pickle, and unpickling can call any Python function. Untrusted files
are therefore read with ``torch.load(..., weights_only=True)``, whose unpickler only builds
tensors, containers and the few extra types allowed here: the numpy arrays, dtypes and scalars
that DiNTS search codes (``arch_code_a``, ``arch_code_c``, ``node_a``) are saved as. Anything
else (a ``__reduce__`` that calls ``os.system``, a custom class) is refused before it runs.

The bundle config side (``$`` expressions, ``_target_``) lives in :mod:`.safe_expr` and
:mod:`.bundle`; archives in :mod:`.archive`.
"""

from __future__ import annotations

import io
import logging
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MedSegNASError

__all__ = [
    "TRUST_HINT",
    "UnsafeContentError",
    "UnsafeModelError",
    "UnsafeConfigError",
    "UnsafeArchiveError",
    "ModelFileError",
    "numpy_safe_globals",
    "load_checkpoint",
    "load_weights",
    "load_arch_code",
]

logger = logging.getLogger(__name__)

#: How every "refused because it could run code" message ends.
TRUST_HINT = "open it with --trust only if you trust its source"

#: Keys under which training scripts nest the state dict of the network.
STATE_DICT_KEYS = ("state_dict", "model", "network")

#: Keys of a DiNTS search code (``TopologySearch.decode()`` as saved by MONAI's search scripts).
ARCH_CODE_KEYS = ("node_a", "arch_code_a", "arch_code_c")

DDP_PREFIX = "module."


class UnsafeContentError(MedSegNASError):
    """A model file asks for something that could run code or escape its folder; refused unless trusted.

    ``problem`` is the one-line finding (which file, entry or expression, and why); the message
    adds ``hint`` (:data:`TRUST_HINT` unless the class says otherwise).
    """

    hint: str | None = TRUST_HINT

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(f"{problem}; {self.hint}" if self.hint else problem)


class UnsafeModelError(UnsafeContentError):
    """A weights file contains pickled code or objects outside the weights-only allow-list."""


class UnsafeConfigError(UnsafeContentError):
    """A bundle config uses an expression, component or file that is not on the allow-list."""


class UnsafeArchiveError(UnsafeContentError):
    """An archive entry would be written outside the destination, or the archive is too large.

    Trusting the sender does not make such an archive acceptable, so the message has no ``--trust`` hint.
    """

    hint = None


class ModelFileError(MedSegNASError):
    """A model file or bundle piece is missing, corrupt, truncated or does not have the expected content."""


def numpy_safe_globals() -> list[Any]:
    """The numpy globals that ``torch.load(weights_only=True)`` may build, for DiNTS search codes.

    ``torch.save`` of a numpy array pickles ``numpy._core.multiarray._reconstruct`` (numpy 2;
    ``numpy.core.multiarray._reconstruct`` in files written with numpy 1), ``numpy.ndarray``,
    ``numpy.dtype`` and, with numpy 2, the dtype class (``numpy.dtypes.Int64DType`` ...).
    Numpy scalars (``np.float64(0.9)`` as a metric) pickle ``multiarray.scalar``. All of these
    only rebuild data; the object dtype class is left out so arrays of arbitrary objects stay refused.
    """
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]

    entries: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries.append((multiarray._reconstruct, f"{module}._reconstruct"))
        entries.append((multiarray.scalar, f"{module}.scalar"))
    numeric = (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
    )
    for scalar_type in numeric:
        dtype_class = type(np.dtype(scalar_type))
        if dtype_class is not np.dtype and dtype_class not in entries:
            entries.append(dtype_class)
    return entries


def _unsafe_pickle_globals(path: Path) -> list[str] | None:
    """Read (never run) the pickle inside ``path`` and list the globals it would import.

    Returns None when no pickle can be parsed (the file is corrupt, not unsafe). Used only to
    tell "refused: it asks for ``posix.system``" apart from "refused: the bytes are garbage".
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                streams = [archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")]
        else:
            streams = [path.read_bytes()]
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    found: list[str] = []
    parsed_any = False
    for data in streams:
        stream = io.BytesIO(data)
        # A legacy (non-zip) torch file is several pickles in a row; look at the first few.
        for _ in range(5):
            strings: list[str] = []
            names: list[str] = []
            try:
                for opcode, arg, _pos in pickletools.genops(stream):
                    if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                        strings.append(str(arg))
                    elif opcode.name in ("GLOBAL", "INST"):
                        names.append(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL":
                        names.append(".".join(strings[-2:]) if len(strings) >= 2 else "<unknown>")
            except Exception:  # not (or no longer) a pickle: stop reading this stream
                break
            parsed_any = True
            found.extend(names)
    if not parsed_any:
        return None
    allowed_prefixes = ("torch.", "collections.OrderedDict")
    allowed_names = {
        entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        for entry in numpy_safe_globals()
    }
    return [n for n in dict.fromkeys(found) if not n.startswith(allowed_prefixes) and n not in allowed_names]


def load_checkpoint(path: str | Path, *, trusted: bool = False) -> Any:
    """Load a PyTorch file (weights, checkpoint or DiNTS search code) onto the CPU without running code.

    Args:
        path: ``.pt``/``.pth`` file written by ``torch.save``.
        trusted: when True, use the full unpickler (``weights_only=False``), which can run code
            from the file: only for files whose source the user trusts (``--trust``).

    Returns:
        The unpickled object, tensors on the CPU; numpy arrays stay numpy arrays.

    Raises:
        UnsafeModelError: the file pickles code or objects outside the weights-only allow-list.
        ModelFileError: missing, empty, truncated or corrupt file, or a TorchScript archive.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"weights file {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"weights file {path} is empty; download or copy it again")
    if trusted:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            raise ModelFileError(f"weights file {path} could not be read: {_one_line(exc)}") from exc
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the global it refused; a pickle it cannot even parse is corrupt, not unsafe.
        refused = re.findall(r"GLOBAL ([\w.]+)", str(exc)) or _unsafe_pickle_globals(path)
        if refused:
            shown = ", ".join(refused[:3]) + (" ..." if len(refused) > 3 else "")
            raise UnsafeModelError(
                f"weights file {path} contains code or objects that are not allowed ({shown}) "
                "and was not loaded"
            ) from None
        raise ModelFileError(
            f"weights file {path} is corrupt or not a PyTorch weights file ({_torch_reason(exc)})"
        ) from None
    except RuntimeError as exc:
        if "TorchScript" in str(exc):
            raise ModelFileError(
                f"weights file {path} is a TorchScript archive, which is not supported; use the "
                "PyTorch weights (models/model.pt)"
            ) from None
        raise ModelFileError(f"weights file {path} is corrupt or truncated ({_torch_reason(exc)})") from None
    except (EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"weights file {path} is corrupt or truncated ({_torch_reason(exc)})") from None


def load_weights(path: str | Path, *, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Load a network's state dict from a weights file without running code from it.

    Accepts a plain state dict or a checkpoint dict holding it under ``state_dict``, ``model``
    or ``network``; strips the ``module.`` prefix that ``DistributedDataParallel`` adds when
    every key has it. Numpy arrays (e.g. DiNTS search codes) become tensors; entries that are
    neither tensors nor arrays (epoch counters, optimizer state) are dropped.

    Args:
        path: file written by ``torch.save``.
        trusted: see :func:`load_checkpoint`.

    Returns:
        Parameter name -> CPU tensor.

    Raises:
        UnsafeModelError, ModelFileError: see :func:`load_checkpoint`; ModelFileError also when
        the file holds no tensors.
    """
    path = Path(path)
    content = load_checkpoint(path, trusted=trusted)
    if not isinstance(content, Mapping):
        raise ModelFileError(
            f"weights file {path} holds a {type(content).__name__}, not a state dict of named tensors"
        )
    for key in STATE_DICT_KEYS:
        nested = content.get(key)
        if isinstance(nested, Mapping) and any(_is_array(v) for v in nested.values()):
            content = nested
            break
    state = {str(k): _to_tensor(v) for k, v in content.items() if _is_array(v)}
    if not state:
        raise ModelFileError(
            f"weights file {path} contains no tensors (keys: {', '.join(map(str, list(content)[:8]))})"
        )
    dropped = [str(k) for k, v in content.items() if not _is_array(v)]
    if dropped:
        logger.debug("%s: ignoring non-tensor entries %s", path, dropped)
    if all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
    return state


def load_arch_code(path: str | Path, *, trusted: bool = False) -> dict[str, list]:
    """Load a DiNTS search code file as plain (JSON-serialisable) nested lists.

    Returns:
        ``{"node_a": (blocks+1) x depths, "arch_code_a": blocks x paths,
        "arch_code_c": blocks x paths}`` (plus ``arch_code_a_max`` when present), as lists of ints.

    Raises:
        ModelFileError: a key is missing; UnsafeModelError: see :func:`load_checkpoint`.
    """
    path = Path(path)
    content = load_checkpoint(path, trusted=trusted)
    if not isinstance(content, Mapping):
        raise ModelFileError(f"search code file {path} holds a {type(content).__name__}, not a dict")
    missing = [k for k in ARCH_CODE_KEYS if k not in content]
    if missing:
        raise ModelFileError(
            f"search code file {path} lacks {', '.join(missing)}; is it a DiNTS search code?"
        )
    codes = {}
    for key in (*ARCH_CODE_KEYS, "arch_code_a_max"):
        if key in content:
            value = content[key]
            if not _is_array(value):
                raise ModelFileError(
                    f"search code file {path}: '{key}' is a {type(value).__name__}, not an array"
                )
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            codes[key] = np.rint(array).astype(np.int64).tolist()
    return codes


def _is_array(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or (isinstance(value, np.ndarray) and value.dtype != object)


def _to_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "") if text else type(exc).__name__


def _torch_reason(exc: BaseException) -> str:
    """The informative part of torch's long multi-paragraph load errors, on one line."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    # torch appends paragraphs of advice; the first sentence says what is wrong.
    return _one_line(RuntimeError(text.strip().split(". ")[0]) if text.strip() else exc)
