"""MONAI bundle ``$`` expressions and ``_target_`` components, checked against allow-lists; no ``eval``.

MONAI's :class:`monai.bundle.ConfigParser` runs every ``"$..."`` string of a bundle config with
Python's ``eval`` and imports whatever ``"_target_"`` names, so a config file can run any code.
Here an expression is parsed with ``ast.parse(mode="eval")`` and *interpreted* node by node:
only the constructs that published model-zoo inference configs use are implemented, and every
name, attribute and call is looked up in an allow-list. Anything else raises
:class:`~.safety.UnsafeConfigError` naming the expression and ``--trust``.

What the allow-lists cover (from the inference configs of spleen_ct_segmentation,
pancreas_ct_dints_segmentation, swin_unetr_btcv_segmentation, multi_organ_segmentation and
wholeBody_ct_segmentation):

- references ``@id`` / ``@id#key`` (MONAI rewrites them to ``__local_refs['id']``),
  constants, lists/tuples/dicts/sets, arithmetic, comparisons, ``x if c else y``, ``and/or/not``,
  subscripts and slices, comprehensions over plain variables (``[{'image': i} for i in @datalist]``);
- ``torch.device(...)``, ``torch.cuda.is_available()``, dtypes (``numpy.float32``, ``torch.float``),
  ``torch.from_numpy``, ``monai.utils.CommonKeys.IMAGE``, ``monai.utils.set_determinism``,
  ``monai.data.load_decathlon_datalist``, ``glob.glob``, ``os.path.join``/``exists``, ``json.loads``;
- ``torch.load(...)`` routed to the weights-only loader (:func:`~.safety.load_checkpoint`), so
  ``$torch.load(@arch_ckpt_path, ...)['arch_code_a']`` of a DiNTS bundle works and stays safe;
- methods on objects the config built: ``@network_def.to(@device)``, ``.eval()``,
  ``.load_state_dict(...)``, ``@evaluator.run()``, calling a ``CheckpointLoader`` or a transform;
- ``setattr(torch.backends.cudnn, 'benchmark' | 'deterministic', bool)``;
- ``import glob|os|numpy|torch|json|math|copy|pathlib|monai...`` (binds a name, imports nothing).

Refused, among others: names and attributes starting with ``_`` (``__class__``, ``__import__``),
``eval``/``exec``/``open``/``getattr``/``compile``, lambdas, f-strings, ``:=``, string ``%``
formatting, any module function not listed (``os.system``, ``torch.hub.load``, ``numpy.load``),
``import scripts`` and every other import (bundle code), and resource bombs (``10**10**10``,
``'x' * 10**12``, ``range(10**12)``).

``_target_`` components are limited to MONAI networks (``monai.networks.nets.*``) and transforms
(``monai.transforms.*``), plus a vetted list of inferers, datasets, readers, handlers, the
evaluator, ``torch.device`` and ``torch.nn`` activations; see :func:`resolve_target`.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ..errors import MedSegNASError
from .safety import ModelFileError, UnsafeConfigError, load_checkpoint

__all__ = [
    "EXPR_PREFIX",
    "ModulePath",
    "default_namespace",
    "substitute_references",
    "is_import_statement",
    "import_bindings",
    "check_expression",
    "evaluate_expression",
    "resolve_target",
    "check_target",
    "component_problems",
    "argument_problems",
]

EXPR_PREFIX = "$"
#: Name under which MONAI's ReferenceResolver passes resolved items to expressions.
REFS_NAME = "__local_refs"
#: Same pattern as ``monai.bundle.ReferenceResolver.id_matcher``: ``@id``, ``@id::key::0``.
_REF_PATTERN = re.compile(r"@(?:\w*)(?:::\w*)*")

MAX_EXPRESSION_CHARS = 10_000
#: Most items one expression may create or iterate over (ranges, repetitions, comprehensions).
MAX_ITEMS = 1_000_000
#: Largest integer (in bits) that ``**`` may produce.
MAX_POWER_BITS = 10_000

#: Top-level packages that ``$import ...`` / ``$from ... import ...`` may name.
SAFE_IMPORT_ROOTS = frozenset({"monai", "torch", "numpy", "glob", "os", "json", "math", "copy", "pathlib"})

#: Packages that ``_target_`` may name anything from (classes and functions defined there).
TARGET_PACKAGES = ("monai.networks.nets", "monai.transforms")

#: Further ``_target_`` components an inference config needs, by public name.
VETTED_TARGETS = (
    "monai.inferers.SimpleInferer",
    "monai.inferers.SlidingWindowInferer",
    "monai.inferers.SlidingWindowInfererAdapt",
    "monai.inferers.SliceInferer",
    "monai.data.Dataset",
    "monai.data.CacheDataset",
    "monai.data.DataLoader",
    "monai.data.ThreadDataLoader",
    "monai.data.ITKReader",
    "monai.data.NibabelReader",
    "monai.data.NumpyReader",
    "monai.data.PILReader",
    "monai.data.PydicomReader",
    "monai.data.NrrdReader",
    "monai.data.ITKWriter",
    "monai.data.NibabelWriter",
    "monai.data.PILWriter",
    "monai.data.load_decathlon_datalist",
    "monai.data.list_data_collate",
    "monai.data.decollate_batch",
    "monai.handlers.CheckpointLoader",
    "monai.handlers.StatsHandler",
    "monai.handlers.from_engine",
    "monai.engines.SupervisedEvaluator",
    "torch.device",
    "torch.nn.ReLU",
    "torch.nn.LeakyReLU",
    "torch.nn.PReLU",
    "torch.nn.ELU",
    "torch.nn.GELU",
    "torch.nn.Sigmoid",
    "torch.nn.Softmax",
    "torch.nn.Tanh",
    "torch.nn.Identity",
)

#: Reader/writer names that ``LoadImage(d)``/``SaveImage(d)`` turn into classes (a dotted name
#: there would be imported with ``pydoc.locate``: ``reader="subprocess.Popen"`` must not pass).
SAFE_READERS = ("ITKReader", "NibabelReader", "NumpyReader", "PILReader", "PydicomReader", "NrrdReader")
SAFE_WRITERS = ("ITKWriter", "NibabelWriter", "PILWriter")

_NUMPY_DTYPES = (
    "bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 complex64 complex128"
)
_TORCH_DTYPES = (
    "bool uint8 int8 int16 int32 int64 short int long float16 float32 float64 half float double bfloat16"
)

#: Module-level names an expression may use, as values or callables.
ALLOWED_GLOBALS = frozenset(
    {
        "torch.device",
        "torch.cuda.is_available",
        "torch.cuda.device_count",
        "torch.from_numpy",
        "torch.as_tensor",
        "torch.tensor",
        "numpy.array",
        "numpy.asarray",
        "numpy.pi",
        "numpy.inf",
        "numpy.nan",
        "monai.utils.set_determinism",
        "monai.data.load_decathlon_datalist",
        "monai.handlers.from_engine",
        "glob.glob",
        "os.sep",
        "os.path.join",
        "os.path.exists",
        "os.path.isfile",
        "os.path.isdir",
        "os.path.basename",
        "os.path.dirname",
        "os.path.splitext",
        "os.path.normpath",
        "json.loads",
        "math.pi",
        "math.sqrt",
        "math.ceil",
        "math.floor",
        "copy.deepcopy",
        *(f"numpy.{name}" for name in _NUMPY_DTYPES.split()),
        *(f"torch.{name}" for name in _TORCH_DTYPES.split()),
        *(
            f"{module}.CommonKeys.{key}"
            for module in ("monai.utils", "monai.utils.enums")
            for key in ("IMAGE", "LABEL", "PRED", "LOSS", "METADATA")
        ),
    }
)

#: Module-level names that are replaced by a safe equivalent.
REPLACED_GLOBALS: dict[str, Callable[..., Any]] = {}

#: Attributes (and methods) an expression may use on objects, by the object's type.
_MODULE_ATTRS = frozenset({"to", "eval", "cpu", "cuda", "float", "half", "load_state_dict", "state_dict"})
_TENSOR_ATTRS = frozenset(
    {"to", "cpu", "cuda", "float", "half", "double", "long", "int", "bool", "tolist", "numpy", "item"}
    | {"shape", "ndim", "dtype", "device", "size", "squeeze", "unsqueeze"}
)
_ARRAY_ATTRS = frozenset({"tolist", "astype", "item", "shape", "ndim", "dtype", "squeeze", "copy", "size"})
_STR_ATTRS = frozenset(
    {"lower", "upper", "strip", "lstrip", "rstrip", "replace", "split", "rsplit", "join", "startswith"}
    | {"endswith", "zfill"}
)
_DICT_ATTRS = frozenset({"get", "keys", "values", "items", "copy"})
_SEQUENCE_ATTRS = frozenset({"index", "count", "copy"})
_DEVICE_ATTRS = frozenset({"type", "index"})
_WORKFLOW_ATTRS = frozenset({"run"})
OBJECT_ATTRIBUTE_NAMES = (
    _MODULE_ATTRS
    | _TENSOR_ATTRS
    | _ARRAY_ATTRS
    | _STR_ATTRS
    | _DICT_ATTRS
    | _SEQUENCE_ATTRS
    | _DEVICE_ATTRS
    | _WORKFLOW_ATTRS
)

_BUNDLE_CODE = "uses the bundle's own code (scripts), which is not run for untrusted bundles"

#: ``setattr`` is allowed for exactly these flags (published configs turn on cudnn benchmarking).
_SETATTR_TARGET = "torch.backends.cudnn"
_SETATTR_NAMES = frozenset({"benchmark", "deterministic"})

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.Call,
    ast.keyword,
    ast.Starred,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.comprehension,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.UAdd,
    ast.USub,
    ast.Not,
    ast.Invert,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Is,
    ast.IsNot,
    ast.In,
    ast.NotIn,
)

_NODE_DESCRIPTIONS = {
    ast.Lambda: "a lambda function",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.LShift: "the << operator",
    ast.RShift: "the >> operator",
    ast.MatMult: "the @ operator",
}

_BINARY_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
_COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


@dataclass(frozen=True)
class ModulePath:
    """A dotted name under an allowed import (``torch.cuda``), looked up only when used and only if allowed."""

    path: str


def _bounded_range(*args: int) -> range:
    """``range`` that refuses to describe more than :data:`MAX_ITEMS` numbers."""
    result = range(*args)
    if len(result) > MAX_ITEMS:
        raise UnsafeConfigError(f"range{args} has more than {MAX_ITEMS} items")
    return result


#: Builtins an expression may call; all are pure functions of their arguments.
SAFE_BUILTINS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "all": all,
    "any": any,
    "bool": bool,
    "dict": dict,
    "enumerate": enumerate,
    "float": float,
    "int": int,
    "len": len,
    "list": list,
    "max": max,
    "min": min,
    "range": _bounded_range,
    "reversed": reversed,
    "round": round,
    "set": set,
    "sorted": sorted,
    "str": str,
    "sum": sum,
    "tuple": tuple,
    "zip": zip,
}


def _config_torch_load(f: Any, map_location: Any = None, weights_only: bool = True, **kwargs: Any) -> Any:
    """``torch.load`` as seen by untrusted configs: weights-only, onto the CPU.

    The device arguments are ignored on purpose: published DiNTS configs ask for ``cuda``, which
    fails on a CPU-only machine, and the network is moved by ``@network_def.to(@device)`` anyway.
    """
    return load_checkpoint(f)


REPLACED_GLOBALS["torch.load"] = _config_torch_load


def default_namespace() -> dict[str, ModulePath]:
    """Names every expression may start from (MONAI's defaults plus the usual ``imports``)."""
    roots = {
        name: ModulePath(name) for name in ("monai", "torch", "numpy", "os", "glob", "json", "math", "copy")
    }
    roots["np"] = ModulePath("numpy")
    return roots


def substitute_references(expression: str) -> str:
    """Rewrite ``$... @id#key ...`` the way MONAI's ReferenceResolver does: ``__local_refs['id::key']``.

    The leading ``$`` is removed. ``#`` becomes ``::`` everywhere, as in MONAI.
    """
    text = expression[len(EXPR_PREFIX) :] if expression.startswith(EXPR_PREFIX) else expression
    text = text.replace("#", "::")
    for ref in sorted(set(_REF_PATTERN.findall(text)), key=len, reverse=True):
        text = text.replace(ref, f"{REFS_NAME}['{ref[1:]}']")
    return text


def is_import_statement(expression: str) -> bool:
    """Whether ``expression`` is ``$import ...`` or ``$from ... import ...``."""
    text = expression[len(EXPR_PREFIX) :] if expression.startswith(EXPR_PREFIX) else expression
    try:
        tree = ast.parse(text.strip())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], (ast.Import, ast.ImportFrom))


def import_bindings(statement: str) -> dict[str, ModulePath]:
    """Names bound by an import statement of a bundle config, without importing anything.

    Raises:
        UnsafeConfigError: the statement imports something outside :data:`SAFE_IMPORT_ROOTS`
            (``import scripts`` is bundle code).
    """
    text = statement[len(EXPR_PREFIX) :] if statement.startswith(EXPR_PREFIX) else statement
    tree = ast.parse(text.strip())
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.Import, ast.ImportFrom)):
        raise UnsafeConfigError(f"{statement!r} is not a single import statement")
    node = tree.body[0]
    if any((alias.asname or "").startswith("_") for alias in node.names):
        raise UnsafeConfigError(f"import {statement!r} binds a name starting with '_', which is not allowed")
    bindings: dict[str, ModulePath] = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            _check_import_root(alias.name, statement)
            root = alias.name.split(".")[0]
            bindings[alias.asname or root] = ModulePath(alias.name if alias.asname else root)
        return bindings
    if node.level or not node.module:
        raise UnsafeConfigError(f"import {statement!r} is relative, i.e. bundle code, which is not run")
    _check_import_root(node.module, statement)
    for alias in node.names:
        if alias.name == "*" or alias.name.startswith("_"):
            raise UnsafeConfigError(f"import {statement!r} imports {alias.name!r}, which is not allowed")
        bindings[alias.asname or alias.name] = ModulePath(f"{node.module}.{alias.name}")
    return bindings


def _check_import_root(module: str, statement: str) -> None:
    parts = module.split(".")
    if parts[0] == "scripts":
        raise UnsafeConfigError(f"import {statement!r} loads bundle code (scripts), which is not run")
    if parts[0] not in SAFE_IMPORT_ROOTS or any(p.startswith("_") for p in parts):
        raise UnsafeConfigError(
            f"import {statement!r} names module '{module}', which is not on the allow-list"
        )


# ----------------------------------------------------------------------------------- targets


@functools.cache
def _locator() -> Any:
    """MONAI's short-name table (``"UNet"`` -> ``monai.networks.nets.unet``), with handlers and engines loaded."""
    import monai.engines  # noqa: F401  (not loaded by ``import monai``; their names must resolve)
    import monai.handlers  # noqa: F401
    from monai.bundle import ComponentLocator

    return ComponentLocator()


@functools.cache
def _vetted_objects() -> dict[int, Any]:
    return {id(obj): obj for obj in (_import_object(path) for path in VETTED_TARGETS) if obj is not None}


def _import_object(path: str) -> Any:
    """Import the longest module prefix of ``path`` and walk the rest as attributes; None if absent.

    Only called for names under trusted packages (MONAI, torch, numpy, the standard library
    modules of :data:`SAFE_IMPORT_ROOTS`), never for a bundle's own modules.
    """
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _full_target_name(target: Any) -> str:
    if not isinstance(target, str):
        raise UnsafeConfigError(f"_target_ {target!r} is not a plain component name")
    name = target.strip()
    if name.startswith(("$", "@", "%")):
        raise UnsafeConfigError(f"_target_ {target!r} is an expression or reference, not a component name")
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        raise UnsafeConfigError(f"_target_ {target!r} is not a valid component name")
    if any(p.startswith("_") for p in parts):
        raise UnsafeConfigError(f"_target_ {target!r} names a private attribute")
    if parts[0] == "scripts":
        raise UnsafeConfigError(f"_target_ {target!r} is bundle code (scripts.*), which is not run")
    if len(parts) == 1:
        module = _locator().get_component_module_name(name)
        if isinstance(module, list):
            module = module[0]  # the one MONAI's ComponentLocator picks too
        if module is None:
            vetted = {p.rsplit(".", 1)[1]: p for p in VETTED_TARGETS}
            if name not in vetted:
                raise UnsafeConfigError(f"_target_ {target!r} is not a MONAI component")
            return vetted[name]
        name = f"{module}.{name}"
    if name.split(".")[0] not in ("monai", "torch"):
        raise UnsafeConfigError(f"_target_ {target!r} is not a MONAI network, transform or vetted component")
    return name


def resolve_target(target: Any) -> Callable[..., Any]:
    """The class or function a ``_target_`` names, if it is allowed.

    Allowed: classes and functions *defined* in ``monai.networks.nets`` or ``monai.transforms``
    (checked on the object, so ``monai.transforms.utils.os.system`` does not pass), and the
    objects of :data:`VETTED_TARGETS`. Short names resolve as MONAI resolves them
    (``"UNet"``, ``"LoadImaged"``, ``"DataLoader"``). Only MONAI and torch modules are imported.

    Raises:
        UnsafeConfigError: anything else (``os.system``, ``scripts.net.Net``, ``torch.hub.load``).
    """
    name = _full_target_name(target)
    obj = _import_object(name)
    if obj is None:
        raise UnsafeConfigError(f"_target_ {target!r} does not exist in this MONAI version")
    if inspect.isclass(obj) or inspect.isfunction(obj):
        module = getattr(obj, "__module__", "") or ""
        if any(module == p or module.startswith(p + ".") for p in TARGET_PACKAGES):
            return obj
    if id(obj) in _vetted_objects():
        return obj
    raise UnsafeConfigError(f"_target_ {target!r} is not a MONAI network, transform or vetted component")


def check_target(target: Any) -> str:
    """Check a ``_target_`` against the allow-list; returns its full name (``monai.networks.nets.unet.UNet``).

    Raises:
        UnsafeConfigError: see :func:`resolve_target`.
    """
    obj = resolve_target(target)
    return f"{obj.__module__}.{obj.__qualname__}"


def _is_safe_io_name(value: str, allowed: tuple[str, ...]) -> bool:
    if "." not in value:
        return value in allowed or value in {a.lower() for a in allowed}
    try:
        obj = resolve_target(value)
    except UnsafeConfigError:
        return False
    return getattr(obj, "__name__", "") in allowed


def argument_problems(args: Mapping[str, Any], *, resolved: bool) -> list[str]:
    """Arguments of a component that would make MONAI run code; empty when there are none.

    ``allow_pickle`` must be false (numpy would unpickle), ``weights_only`` true (torch would),
    ``reader``/``writer`` must name a MONAI reader/writer (a dotted name is imported with
    ``pydoc.locate``), ``merger_cls`` a MONAI merger, and ``_debug_`` is refused (opens pdb).

    Args:
        args: the component's arguments: raw config values (``resolved=False``; references and
            expressions are then checked when the component is built) or built values.
    """
    problems = []
    for key, value in args.items():
        unresolved = not resolved and isinstance(value, str) and value.startswith(("@", "$", "%"))
        if key == "_debug_":
            problems.append("'_debug_' opens the debugger")
        elif key == "allow_pickle" and value is not False and (unresolved or bool(value)):
            problems.append("'allow_pickle' must be false: numpy would unpickle code")
        elif key == "weights_only" and value is not True:
            problems.append("'weights_only' must be true: torch would unpickle code")
        elif key in ("reader", "writer") and not unresolved:
            allowed = SAFE_READERS if key == "reader" else SAFE_WRITERS
            names = value if isinstance(value, (list, tuple)) else [value]
            for name in names:
                if isinstance(name, str) and not _is_safe_io_name(name, allowed):
                    problems.append(f"{key} {name!r} is not a MONAI {key} (one of {', '.join(allowed)})")
        elif key == "merger_cls" and isinstance(value, str) and not unresolved:
            if not value.isidentifier() or value.startswith("_"):
                problems.append(f"merger_cls {value!r} is not a MONAI merger name")
    return problems


def component_problems(config: Mapping[str, Any]) -> list[str]:
    """Problems of one ``{"_target_": ..., ...}`` config dict, found without building it."""
    problems = []
    try:
        check_target(config.get("_target_"))
    except UnsafeConfigError as exc:
        problems.append(exc.problem)
    mode = config.get("_mode_", "default")
    if mode not in ("default", "callable"):
        problems.append(f"_mode_ {mode!r} is not allowed (only 'default' and 'callable')")
    args = {
        k: v
        for k, v in config.items()
        if k not in ("_target_", "_mode_", "_disabled_", "_requires_", "_desc_")
    }
    problems.extend(argument_problems(args, resolved=False))
    return problems


# ------------------------------------------------------------------------------ expressions


def _path_allowed(path: str) -> bool:
    if path in ALLOWED_GLOBALS or path in REPLACED_GLOBALS:
        return True
    try:
        resolve_target(path)
    except UnsafeConfigError:
        return False
    return True


def _parse(text: str, shown: str) -> ast.Expression:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise UnsafeConfigError(f"expression {shown} is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ModelFileError(f"expression {shown} is not valid Python: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise UnsafeConfigError(f"expression {shown} is too deeply nested") from None


def _shown(expression: str) -> str:
    text = expression if len(expression) <= 200 else expression[:197] + "..."
    return repr(text)


def check_expression(expression: str, *, namespace: Mapping[str, ModulePath] | None = None) -> list[str]:
    """Why a ``$`` expression would be refused, found without evaluating it; empty when it is allowed.

    The runtime interpreter (:func:`evaluate_expression`) checks again with the actual values
    (e.g. that ``.to`` is called on a network), so passing here is necessary, not sufficient.

    Args:
        expression: the config string, with or without the leading ``$``, with ``@`` references.
        namespace: names bound by the config's imports; default :func:`default_namespace`.
    """
    roots = {k: v.path for k, v in (namespace or default_namespace()).items()}
    if is_import_statement(expression):
        try:
            import_bindings(expression)
        except UnsafeConfigError as exc:
            return [exc.problem]
        return []
    try:
        tree = _parse(substitute_references(expression), _shown(expression))
    except (UnsafeConfigError, ModelFileError) as exc:
        return [exc.problem if isinstance(exc, UnsafeConfigError) else str(exc)]
    found = sorted(_static_problems(tree, roots), key=lambda item: item[0])  # innermost first
    return list(dict.fromkeys(problem for _, problem in found))


def _static_problems(tree: ast.Expression, roots: Mapping[str, str]) -> Iterator[tuple[tuple[int, int], str]]:
    """(end position of the offending node, reason) for every refused construct in ``tree``."""
    for node, problem in _static_findings(tree, roots):
        yield (getattr(node, "end_lineno", 0) or 0, getattr(node, "end_col_offset", 0) or 0), problem


def _static_findings(tree: ast.Expression, roots: Mapping[str, str]) -> Iterator[tuple[ast.AST, str]]:
    """The same rules as :class:`_Interpreter`, applied to the syntax tree alone."""
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    local_names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

    def module_chain(node: ast.AST) -> str | None:
        attrs = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in roots and node.id not in local_names:
            return ".".join([roots[node.id], *reversed(attrs)])
        return None

    def is_setattr_target(node: ast.AST) -> bool:
        call = parents.get(node)
        return (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "setattr"
            and bool(call.args)
            and call.args[0] is node
        )

    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, _ALLOWED_NODES):
            yield (
                node,
                f"uses {_NODE_DESCRIPTIONS.get(type(node), type(node).__name__)}, which is not allowed",
            )
            continue  # nothing inside a refused construct is reported again
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
        parent = parents.get(node)
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Store):
                if node.id.startswith("_"):
                    yield node, f"binds the name '{node.id}', which is not allowed"
                continue
            if node.id == REFS_NAME:
                if not (
                    isinstance(parent, ast.Subscript)
                    and parent.value is node
                    and isinstance(parent.slice, ast.Constant)
                    and isinstance(parent.slice.value, str)
                ):
                    yield node, f"uses the name '{REFS_NAME}' other than as an @reference"
            elif node.id in local_names:
                if isinstance(parent, ast.Call) and parent.func is node:
                    yield node, f"calls the variable '{node.id}'"
            elif node.id in roots:
                if not isinstance(parent, ast.Attribute) and not _path_allowed(roots[node.id]):
                    yield node, f"uses '{roots[node.id]}', which is not on the allow-list"
            elif node.id == "setattr":
                if not (isinstance(parent, ast.Call) and parent.func is node):
                    yield node, "uses 'setattr' other than to set torch.backends.cudnn flags"
                else:
                    yield from ((parent, p) for p in _static_setattr_problems(parent, module_chain))
            elif node.id == "scripts":
                yield node, _BUNDLE_CODE
            elif node.id not in SAFE_BUILTINS:
                yield node, f"uses the name '{node.id}', which is not on the allow-list"
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                yield node, f"reads the private attribute '.{node.attr}'"
                continue
            path = module_chain(node)
            if path is None:
                if node.attr not in OBJECT_ATTRIBUTE_NAMES:
                    yield node, f"reads '.{node.attr}', which is not on the allow-list"
            elif not (isinstance(parent, ast.Attribute) and parent.value is node):
                if not (_path_allowed(path) or (path == _SETATTR_TARGET and is_setattr_target(node))):
                    yield node, f"uses '{path}', which is not on the allow-list"
        elif isinstance(node, ast.Call):
            func = node.func
            is_ref = (
                isinstance(func, ast.Subscript)
                and isinstance(func.value, ast.Name)
                and func.value.id == REFS_NAME
            )
            if not isinstance(func, (ast.Name, ast.Attribute)) and not is_ref:
                yield node, "calls the result of an expression"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, (str, bytes)):
                yield node, "uses string % formatting, which is not allowed"
        elif isinstance(node, ast.comprehension) and node.is_async:
            yield node, "uses an async comprehension"
        elif isinstance(node, ast.Starred) and isinstance(node.ctx, ast.Store):
            yield node, "unpacks with * in a comprehension target"


def _static_setattr_problems(call: ast.Call, module_chain: Callable[[ast.AST], str | None]) -> Iterator[str]:
    ok = (
        len(call.args) == 3
        and not call.keywords
        and module_chain(call.args[0]) == _SETATTR_TARGET
        and isinstance(call.args[1], ast.Constant)
        and call.args[1].value in _SETATTR_NAMES
    )
    if not ok:
        yield "uses 'setattr' other than to set torch.backends.cudnn.benchmark/deterministic"


@functools.cache
def _object_attribute_rules() -> tuple[tuple[Any, frozenset[str]], ...]:
    import numpy as np
    import torch
    from monai.engines import Workflow

    return (
        (torch.nn.Module, _MODULE_ATTRS),
        (torch.Tensor, _TENSOR_ATTRS),
        (np.ndarray, _ARRAY_ATTRS),
        (np.generic, frozenset({"item", "tolist", "dtype"})),
        (torch.device, _DEVICE_ATTRS),
        (str, _STR_ATTRS),
        (dict, _DICT_ATTRS),
        ((list, tuple), _SEQUENCE_ATTRS),
        (Workflow, _WORKFLOW_ATTRS),
    )


@functools.cache
def _callable_instance_types() -> tuple[type, ...]:
    """Objects built by the config that an expression may call: ``@checkpointloader(@evaluator)``."""
    from monai.handlers import CheckpointLoader
    from monai.inferers import Inferer
    from monai.transforms import Transform

    return (CheckpointLoader, Transform, Inferer)


class _Interpreter:
    """Evaluates one parsed expression; every name, attribute and call goes through an allow-list."""

    def __init__(self, label: str, namespace: Mapping[str, Any], refs: Mapping[str, Any]):
        self.label = label
        self.namespace = namespace
        self.refs = refs
        self.budget = MAX_ITEMS

    def refuse(self, reason: str) -> NoReturn:
        raise UnsafeConfigError(f"{self.label} is not allowed: {reason}")

    # values ---------------------------------------------------------------------------

    def value(self, node: ast.AST, scope: dict[str, Any]) -> Any:
        raw = self.raw(node, scope)
        if isinstance(raw, ModulePath):
            return self.resolve_path(raw.path)
        return raw

    def resolve_path(self, path: str) -> Any:
        if path in REPLACED_GLOBALS:
            return REPLACED_GLOBALS[path]
        if path in ALLOWED_GLOBALS:
            obj = _import_object(path)
            if obj is None:
                raise ModelFileError(f"{self.label}: '{path}' does not exist in the installed version")
            return obj
        try:
            return resolve_target(path)
        except UnsafeConfigError:
            self.refuse(f"uses '{path}', which is not on the allow-list")

    def raw(self, node: ast.AST, scope: dict[str, Any]) -> Any:
        """The value of ``node``; a :class:`ModulePath` for (parts of) module names, resolved by the caller."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.name(node.id, scope)
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                self.refuse(f"reads the private attribute '.{node.attr}'")
            base = self.raw(node.value, scope)
            if isinstance(base, ModulePath):
                return ModulePath(f"{base.path}.{node.attr}")
            return self.attribute(base, node.attr)
        handler = getattr(self, f"node_{type(node).__name__}", None)
        if handler is None:
            self.refuse(
                f"uses {_NODE_DESCRIPTIONS.get(type(node), type(node).__name__)}, which is not allowed"
            )
        return handler(node, scope)

    def name(self, name: str, scope: dict[str, Any]) -> Any:
        if name in scope:
            return scope[name]
        if name.startswith("_"):
            self.refuse(f"uses the name '{name}', which is not allowed")
        if name in self.namespace:
            return self.namespace[name]
        if name in SAFE_BUILTINS:
            return SAFE_BUILTINS[name]
        if name == "scripts":
            self.refuse(_BUNDLE_CODE)
        self.refuse(f"uses the name '{name}', which is not on the allow-list")

    def attribute(self, obj: Any, attr: str) -> Any:
        for types, names in _object_attribute_rules():
            if isinstance(obj, types) and attr in names:
                return getattr(obj, attr)
        self.refuse(f"reads '.{attr}' of a {type(obj).__name__}, which is not on the allow-list")

    def iterate(self, iterable: Any) -> Iterator[Any]:
        for item in iter(iterable):
            self.budget -= 1
            if self.budget < 0:
                self.refuse(f"creates or iterates over more than {MAX_ITEMS} items")
            yield item

    # nodes ----------------------------------------------------------------------------

    def node_Subscript(self, node: ast.Subscript, scope: dict[str, Any]) -> Any:
        if isinstance(node.value, ast.Name) and node.value.id == REFS_NAME:
            if not (isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
                self.refuse(f"uses '{REFS_NAME}' other than as an @reference")
            key = node.slice.value
            if key not in self.refs:
                raise ModelFileError(f"{self.label} refers to '@{key}', which is not defined in the config")
            return self.refs[key]
        container = self.value(node.value, scope)
        return container[self.value(node.slice, scope)]

    def node_Slice(self, node: ast.Slice, scope: dict[str, Any]) -> slice:
        def part(n: ast.AST | None) -> Any:
            return None if n is None else self.value(n, scope)

        return slice(part(node.lower), part(node.upper), part(node.step))

    def elements(self, nodes: Iterable[ast.AST], scope: dict[str, Any]) -> list[Any]:
        items: list[Any] = []
        for element in nodes:
            if isinstance(element, ast.Starred):
                items.extend(self.iterate(self.value(element.value, scope)))
            else:
                items.append(self.value(element, scope))
        return items

    def node_List(self, node: ast.List, scope: dict[str, Any]) -> list[Any]:
        return self.elements(node.elts, scope)

    def node_Tuple(self, node: ast.Tuple, scope: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(self.elements(node.elts, scope))

    def node_Set(self, node: ast.Set, scope: dict[str, Any]) -> set[Any]:
        return set(self.elements(node.elts, scope))

    def node_Dict(self, node: ast.Dict, scope: dict[str, Any]) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:  # {**mapping}
                mapping = self.value(value, scope)
                if not isinstance(mapping, Mapping):
                    self.refuse(f"unpacks a {type(mapping).__name__} with **")
                result.update(mapping)
            else:
                result[self.value(key, scope)] = self.value(value, scope)
        return result

    def node_BinOp(self, node: ast.BinOp, scope: dict[str, Any]) -> Any:
        op = type(node.op)
        if op not in _BINARY_OPERATORS:
            self.refuse(f"uses {_NODE_DESCRIPTIONS.get(op, op.__name__)}, which is not allowed")
        left, right = self.value(node.left, scope), self.value(node.right, scope)
        if op is ast.Mod and isinstance(left, (str, bytes)):
            self.refuse("uses string % formatting, which is not allowed")
        if op is ast.Pow and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_POWER_BITS:
                self.refuse(f"computes a power with more than {MAX_POWER_BITS} bits")
        if op is ast.Mult:
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
                    if len(seq) * count > MAX_ITEMS:
                        self.refuse(f"repeats a sequence to more than {MAX_ITEMS} items")
        return _BINARY_OPERATORS[op](left, right)

    def node_UnaryOp(self, node: ast.UnaryOp, scope: dict[str, Any]) -> Any:
        return _UNARY_OPERATORS[type(node.op)](self.value(node.operand, scope))

    def node_BoolOp(self, node: ast.BoolOp, scope: dict[str, Any]) -> Any:
        result: Any = None
        for operand in node.values:
            result = self.value(operand, scope)
            if isinstance(node.op, ast.And) and not result:
                return result
            if isinstance(node.op, ast.Or) and result:
                return result
        return result

    def node_Compare(self, node: ast.Compare, scope: dict[str, Any]) -> bool:
        left = self.value(node.left, scope)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.value(comparator, scope)
            if not _COMPARISONS[type(op)](left, right):
                return False
            left = right
        return True

    def node_IfExp(self, node: ast.IfExp, scope: dict[str, Any]) -> Any:
        branch = node.body if self.value(node.test, scope) else node.orelse
        return self.value(branch, scope)

    def comprehension(self, generators: list[ast.comprehension], scope: dict[str, Any]) -> Iterator[dict]:
        """Yield the scopes (loop variable bindings) that pass every ``if``, outermost loop first."""
        first, rest = generators[0], generators[1:]
        if first.is_async:
            self.refuse("uses an async comprehension")
        for item in self.iterate(self.value(first.iter, scope)):
            inner = dict(scope)
            self.bind(first.target, item, inner)
            if all(self.value(test, inner) for test in first.ifs):
                if rest:
                    yield from self.comprehension(rest, inner)
                else:
                    yield inner

    def bind(self, target: ast.AST, item: Any, scope: dict[str, Any]) -> None:
        if isinstance(target, ast.Name) and not target.id.startswith("_"):
            scope[target.id] = item
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = list(item)
            if len(values) != len(target.elts):
                raise ValueError(f"cannot unpack {len(values)} values into {len(target.elts)} names")
            for sub_target, sub_item in zip(target.elts, values, strict=True):
                self.bind(sub_target, sub_item, scope)
        else:
            self.refuse("binds a comprehension variable other than plain names")

    def node_ListComp(self, node: ast.ListComp, scope: dict[str, Any]) -> list[Any]:
        return [self.value(node.elt, inner) for inner in self.comprehension(node.generators, scope)]

    def node_GeneratorExp(self, node: ast.GeneratorExp, scope: dict[str, Any]) -> Iterator[Any]:
        return iter(self.node_ListComp(node, scope))  # type: ignore[arg-type]

    def node_SetComp(self, node: ast.SetComp, scope: dict[str, Any]) -> set[Any]:
        return {self.value(node.elt, inner) for inner in self.comprehension(node.generators, scope)}

    def node_DictComp(self, node: ast.DictComp, scope: dict[str, Any]) -> dict[Any, Any]:
        return {
            self.value(node.key, inner): self.value(node.value, inner)
            for inner in self.comprehension(node.generators, scope)
        }

    def node_Call(self, node: ast.Call, scope: dict[str, Any]) -> Any:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "setattr" and "setattr" not in scope:
            return self.call_setattr(node, scope)
        function = self.callee(func, scope)
        args = self.elements(node.args, scope)
        kwargs: dict[str, Any] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                mapping = self.value(keyword.value, scope)
                if not isinstance(mapping, Mapping):
                    self.refuse(f"unpacks a {type(mapping).__name__} with **")
                kwargs.update(mapping)
            else:
                kwargs[keyword.arg] = self.value(keyword.value, scope)
        return function(*args, **kwargs)

    def callee(self, func: ast.AST, scope: dict[str, Any]) -> Callable[..., Any]:
        raw = self.raw(func, scope)
        if isinstance(raw, ModulePath):
            return self.resolve_path(raw.path)
        if isinstance(func, ast.Name):
            if func.id not in scope and SAFE_BUILTINS.get(func.id) is raw:
                return raw
            self.refuse(f"calls the variable '{func.id}'")
        if isinstance(func, ast.Attribute):
            return raw  # a method that self.attribute() allowed for this object's type
        if (
            isinstance(func, ast.Subscript)
            and isinstance(func.value, ast.Name)
            and func.value.id == REFS_NAME
        ):
            if isinstance(raw, _callable_instance_types()):
                return raw
            self.refuse(f"calls a {type(raw).__name__}, which is not a callable MONAI component")
        self.refuse("calls the result of an expression")

    def call_setattr(self, node: ast.Call, scope: dict[str, Any]) -> None:
        target = self.raw(node.args[0], scope) if node.args else None
        name = node.args[1] if len(node.args) > 1 else None
        if not (
            len(node.args) == 3
            and not node.keywords
            and target == ModulePath(_SETATTR_TARGET)
            and isinstance(name, ast.Constant)
            and name.value in _SETATTR_NAMES
        ):
            self.refuse("uses 'setattr' other than to set torch.backends.cudnn.benchmark/deterministic")
        flag = self.value(node.args[2], scope)
        if not isinstance(flag, bool):
            self.refuse(f"sets torch.backends.cudnn.{name.value} to a {type(flag).__name__}, not a bool")
        import torch.backends.cudnn

        setattr(torch.backends.cudnn, name.value, flag)
        return None


def evaluate_expression(
    expression: str,
    refs: Mapping[str, Any] | None = None,
    *,
    namespace: Mapping[str, ModulePath] | None = None,
    label: str | None = None,
) -> Any:
    """Evaluate a bundle ``$`` expression without ``eval``, allowing only the documented subset.

    Args:
        expression: the config string (``"$@network_def.to(@device)"``); the ``$`` is optional.
            ``@id`` references are looked up in ``refs``; text already rewritten by MONAI's
            ReferenceResolver (``__local_refs['id']``) works too.
        refs: resolved config items by id (``"network_def"``, ``"displayable_configs::highres"``).
        namespace: names bound by the config's imports; default :func:`default_namespace`.
        label: how messages name the expression (default: the expression itself).

    Returns:
        The value, as MONAI's ``eval`` would compute it (except that ``torch.load`` is
        weights-only and loads onto the CPU).

    Raises:
        UnsafeConfigError: the expression uses something outside the allow-list; nothing of it ran
            (sub-expressions before the refused part may have been evaluated; they are all allowed ones).
        ModelFileError: the expression is allowed but failed (bad syntax, unknown reference, an error
            from the called function).
    """
    shown = label or f"expression {_shown(expression)}"
    normalized_refs = {str(k).replace("#", "::"): v for k, v in (refs or {}).items()}
    if is_import_statement(expression):
        bindings = import_bindings(expression)
        return next(iter(bindings.values()))
    tree = _parse(substitute_references(expression), _shown(expression))
    interpreter = _Interpreter(
        shown, namespace if namespace is not None else default_namespace(), normalized_refs
    )
    try:
        return interpreter.value(tree.body, {})
    except MedSegNASError:
        raise
    except RecursionError:
        raise UnsafeConfigError(f"{shown} is too deeply nested") from None
    except MemoryError:
        raise UnsafeConfigError(f"{shown} needs too much memory") from None
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise ModelFileError(f"{shown} failed: {type(exc).__name__}: {message}") from exc
