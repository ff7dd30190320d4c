"""MONAI bundle ``$`` expressions and ``_target_`` components, checked against allow-lists; no ``eval``.

MONAI's :class:`monai.bundle.ConfigParser` runs every ``"$..."`` string of a bundle config with
Python's ``eval`` and imports whatever ``"_target_"`` names, so a config file can run any code.
Here an expression is parsed with ``ast.parse(mode="eval")`` and *interpreted* node by node:
only the constructs that published model-zoo inference configs use are implemented, and every
name, attribute and call is looked up in an allow-list. Anything else raises
:class:`~.safety.UnsafeConfigError` naming the expression and ``--trust``.

What the allow-lists cover (from the inference configs of the model-zoo bundles in
``Testing/data/model_zoo``):

- references ``@id`` / ``@id#key`` (MONAI rewrites them to ``__local_refs['id']``),
  constants, lists/tuples/dicts/sets, arithmetic, comparisons, ``x if c else y``, ``and/or/not``,
  subscripts and slices, comprehensions over plain variables (``[{'image': i} for i in @datalist]``),
  ``lambda x: ...`` (BraTS's output step; a :class:`SafeLambda` that only components call);
- ``torch.device(...)``, ``torch.cuda.is_available()``, dtypes (``numpy.float32``, ``torch.float``),
  ``torch.from_numpy``, ``torch.where``, ``monai.utils.CommonKeys.IMAGE``, ``os.path.join``,
  ``json.loads``; ``glob.glob``, ``os.path.exists/isfile/isdir`` and ``torch.load`` only on paths
  inside the bundle folder (:data:`FILE_FUNCTIONS`);
- ``torch.load(...)`` routed to the weights-only loader (:func:`~.safety.load_checkpoint`), so
  ``$torch.load(@arch_ckpt_path, ...)['arch_code_a']`` of a DiNTS bundle works and stays safe;
- methods on values: ``@network_def.to(@device)``, ``.eval()``, tensor, string, dict methods;
- ``setattr(torch.backends.cudnn, 'benchmark' | 'deterministic', bool)``;
- ``import glob|os|numpy|torch|json|math|copy|pathlib|monai...`` (binds a name, imports nothing);
  a refused import only matters when an expression that is evaluated uses the name it binds.

Refused, among others: names and attributes starting with ``_`` (``__class__``, ``__import__``),
``eval``/``exec``/``open``/``getattr``/``compile``, f-strings, ``:=``, string ``%``
formatting, any module function not listed (``os.system``, ``torch.hub.load``, ``numpy.load``),
building components inside an expression (``$monai.transforms.SaveImage(...)``), calling a
component the config built (``$@saver(x)``; only the engine calls what the config built),
``import scripts`` and every other import (bundle code).

Bounded evaluation: every value an expression builds is charged to one budget per config
(:data:`MAX_EVALUATION_UNITS` characters/items/iterations, :data:`MAX_EVALUATION_SECONDS`), and
operations that can make a large value from small ones (``*``, ``**``, ``str.join``,
``str.replace``, broadcasting) are checked *before* they run.

``_target_`` components are those of :data:`~.capabilities.COMPONENTS`, each with the arguments
it may take; see :mod:`.capabilities` and :func:`resolve_target`.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import math
import operator
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ..errors import MedSegNASError
from .capabilities import COMPONENTS, argument_problems, component_rule
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
    "import_names",
    "EvaluationBudget",
    "RefusedImport",
    "SafeLambda",
    "FILE_FUNCTIONS",
]

EXPR_PREFIX = "$"
#: Name under which MONAI's ReferenceResolver passes resolved items to expressions.
REFS_NAME = "__local_refs"
#: Same pattern as ``monai.bundle.ReferenceResolver.id_matcher``: ``@id``, ``@id::key::0``.
_REF_PATTERN = re.compile(r"@(?:\w*)(?:::\w*)*")

MAX_EXPRESSION_CHARS = 10_000
#: Most items one expression may create or iterate over (ranges, repetitions, comprehensions).
MAX_ITEMS = 1_000_000
#: Largest integer (in bits) that ``**`` or ``*`` may produce.
MAX_POWER_BITS = 10_000
#: Budget of one config's expressions together: characters of strings, items of containers,
#: iterations and 64-bit words of integers that they build or go through. Checked *before* an
#: operation that could make a value larger than what is left (``*``, ``join``, ``replace``...).
MAX_EVALUATION_UNITS = 10_000_000
#: Wall-clock limit of one config's expressions together (seconds), checked at every step.
MAX_EVALUATION_SECONDS = 30.0
#: Most elements of a tensor or array an expression may make beyond the largest one it was given.
MAX_TENSOR_ITEMS = 1_000_000
#: Most entries a ``glob.glob`` inside the bundle may return.
MAX_GLOB_RESULTS = 10_000

#: Top-level packages that ``$import ...`` / ``$from ... import ...`` may name.
SAFE_IMPORT_ROOTS = frozenset({"monai", "torch", "numpy", "glob", "os", "json", "math", "copy", "pathlib"})

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
        "torch.where",
        "os.sep",
        "os.path.join",
        "os.path.basename",
        "os.path.dirname",
        "os.path.splitext",
        "os.path.normpath",
        "json.loads",
        "math.pi",
        "math.sqrt",
        "math.ceil",
        "math.floor",
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
_MODULE_ATTRS = frozenset({"to", "eval", "cpu", "cuda", "float", "half"})
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
OBJECT_ATTRIBUTE_NAMES = (
    _MODULE_ATTRS | _TENSOR_ATTRS | _ARRAY_ATTRS | _STR_ATTRS | _DICT_ATTRS | _SEQUENCE_ATTRS | _DEVICE_ATTRS
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
    ast.Lambda,
    ast.arguments,
    ast.arg,
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
    "sum": lambda iterable, start=0: _number_sum(iterable, start),
    "tuple": tuple,
    "zip": zip,
}


def _number_sum(iterable: Any, start: Any = 0) -> Any:
    """``sum`` of numbers only (``sum(lists, [])`` is quadratic in time)."""
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise TypeError("sum() may only add numbers here (adding lists takes quadratic time)")
    return sum(iterable, start)


#: Functions that look at files: allowed only on paths inside the bundle folder (see
#: :meth:`_Interpreter.bundle_path`); ``torch.load`` is the weights-only loader onto the CPU.
FILE_FUNCTIONS = frozenset({"glob.glob", "os.path.exists", "os.path.isfile", "os.path.isdir", "torch.load"})


class RefusedImport:
    """What a refused ``$import`` binds: using the name reports why the import was refused."""

    def __init__(self, problem: str):
        self.problem = problem


@dataclass
class EvaluationBudget:
    """What the expressions of one config may still spend: :data:`MAX_EVALUATION_UNITS` and seconds.

    Time counts only while an expression (or a lambda call) is being evaluated.
    """

    units: int = MAX_EVALUATION_UNITS
    seconds: float = MAX_EVALUATION_SECONDS
    used_seconds: float = 0.0
    _since: float | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count the time of the evaluation inside this block (nested blocks count once)."""
        if self._since is not None:
            yield
            return
        self._since = time.monotonic()
        try:
            yield
        finally:
            self.used_seconds += time.monotonic() - self._since
            self._since = None

    def spend(self, amount: int) -> str | None:
        """Take ``amount`` units; the problem when the budget or the time is exhausted."""
        self.units -= max(0, int(amount))
        if self.units < 0:
            return (
                f"builds or goes through more than {MAX_EVALUATION_UNITS:,} items "
                "(characters, list items, iterations) in all (MAX_EVALUATION_UNITS)"
            )
        elapsed = self.used_seconds + (time.monotonic() - self._since if self._since is not None else 0.0)
        if elapsed > self.seconds:
            return f"runs longer than {self.seconds:g} s in all (MAX_EVALUATION_SECONDS)"
        return None


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


def import_names(statement: str) -> list[str]:
    """The names an import statement would bind, whether or not it is allowed (nothing is imported)."""
    text = statement[len(EXPR_PREFIX) :] if statement.startswith(EXPR_PREFIX) else statement
    try:
        node = ast.parse(text.strip()).body[0]
    except (SyntaxError, ValueError, RecursionError, MemoryError, IndexError):
        return []
    if isinstance(node, ast.Import):
        return [alias.asname or alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [alias.asname or alias.name for alias in node.names]
    return []


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
        if name in COMPONENTS:
            return COMPONENTS[name].path
        module = _locator().get_component_module_name(name)
        if isinstance(module, list):
            module = module[0]  # the one MONAI's ComponentLocator picks too
        if module is None:
            raise UnsafeConfigError(f"_target_ {target!r} is not a MONAI component on the allow-list")
        name = f"{module}.{name}"
    if name.split(".")[0] not in ("monai", "torch"):
        raise UnsafeConfigError(f"_target_ {target!r} is not a component on the allow-list")
    return name


def resolve_target(target: Any) -> Callable[..., Any]:
    """The class a ``_target_`` names, if it is on the capability allow-list.

    Allowed: the components of :data:`~.capabilities.COMPONENTS` (checked on the object, so
    ``monai.transforms.utils.os.system`` does not pass). Short names resolve as MONAI resolves
    them (``"UNet"``, ``"LoadImaged"``). Only MONAI and torch modules are imported.

    Raises:
        UnsafeConfigError: anything else (``os.system``, ``scripts.net.Net``, ``SaveImage`` used as
            an expression, ``HoVerNet``, ``DataLoader``), naming the rule.
    """
    name = _full_target_name(target)
    obj = _import_object(name)
    if obj is None:
        raise UnsafeConfigError(f"_target_ {target!r} does not exist in this MONAI version")
    if component_rule(obj) is None:
        shown = getattr(obj, "__name__", name)
        raise UnsafeConfigError(
            f"_target_ {target!r} ({shown}) is not on the allow-list of inference components"
        )
    return obj


def check_target(target: Any) -> str:
    """Check a ``_target_`` against the allow-list; returns its full name (``monai.networks.nets.unet.UNet``).

    Raises:
        UnsafeConfigError: see :func:`resolve_target`.
    """
    obj = resolve_target(target)
    return f"{obj.__module__}.{obj.__qualname__}"


def component_problems(config: Mapping[str, Any]) -> list[str]:
    """Problems of one ``{"_target_": ..., ...}`` config dict, found without building it.

    The target must be on the allow-list, ``_mode_`` must be ``"default"``, and every argument
    must be one the component may take; literal values must pass their rule (type and range),
    values given by ``@``/``$`` are checked again when the component is built.
    """
    problems = []
    try:
        obj = resolve_target(config.get("_target_"))
    except UnsafeConfigError as exc:
        return [exc.problem]
    name, rule = component_rule(obj)  # type: ignore[misc]
    mode = config.get("_mode_", "default")
    if mode != "default":
        problems.append(f"_mode_ {mode!r} is not allowed (components are built, only the engine calls them)")
    if "_debug_" in config:
        problems.append("'_debug_' opens the debugger")
    disabled = config.get("_disabled_", False)
    if not isinstance(disabled, bool):
        problems.append("_disabled_ must be true or false")
    problems.extend(argument_problems(name, rule, config, resolved=False))
    return problems


# ------------------------------------------------------------------------------ expressions


def _path_allowed(path: str) -> bool:
    """Module-level names an expression may use; components are built only from ``_target_`` items."""
    return path in ALLOWED_GLOBALS or path in REPLACED_GLOBALS or path in FILE_FUNCTIONS


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
    local_names |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}

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
            if is_ref:
                yield (
                    node,
                    (
                        f"calls the component '@{func.slice.value}' (only the engine calls what the config built)"  # type: ignore[attr-defined]
                    ),
                )
            elif not isinstance(func, (ast.Name, ast.Attribute)):
                yield node, "calls the result of an expression"
        elif isinstance(node, ast.Lambda):
            arguments = node.args
            if (
                arguments.vararg
                or arguments.kwarg
                or arguments.kwonlyargs
                or arguments.defaults
                or arguments.kw_defaults
                or arguments.posonlyargs
            ):
                yield node, "uses a lambda with other than plain positional parameters"
        elif isinstance(node, ast.arg):
            if node.arg.startswith("_") or node.annotation is not None:
                yield node, f"binds the name '{node.arg}', which is not allowed"
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

    return (
        (torch.nn.Module, _MODULE_ATTRS),
        (torch.Tensor, _TENSOR_ATTRS),
        (np.ndarray, _ARRAY_ATTRS),
        (np.generic, frozenset({"item", "tolist", "dtype"})),
        (torch.device, _DEVICE_ATTRS),
        (str, _STR_ATTRS),
        (dict, _DICT_ATTRS),
        ((list, tuple), _SEQUENCE_ATTRS),
    )


def _size(value: Any) -> int:
    """Budget units a value stands for: characters, items, 64-bit words of an integer."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset, range)):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 64 + 1
    return 1


def _numel(value: Any) -> int | None:
    """Elements of a tensor or numpy array; None for other values."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return int(value.numel())
    if isinstance(value, np.ndarray):
        return int(value.size)
    return None


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None and _numel(value) is not None else None


class SafeLambda:
    """A bundle's ``$lambda x: ...`` made callable for MONAI (``Lambdad(func=...)``) without ``eval``.

    Each call interprets the body with the same allow-lists and a fresh budget; the parameters
    may not be called. Only components (the engine applying ``Lambdad``) call it: expressions may not.
    """

    def __init__(self, interpreter: _Interpreter, node: ast.Lambda, scope: dict[str, Any]):
        self._interpreter = interpreter
        self._node = node
        self._scope = dict(scope)
        self.params = [a.arg for a in node.args.args]

    def __call__(self, *args: Any) -> Any:
        if len(args) != len(self.params):
            raise TypeError(f"the lambda takes {len(self.params)} argument(s), not {len(args)}")
        source = self._interpreter
        run = _Interpreter(
            source.label,
            source.namespace,
            source.refs,
            bundle_root=source.bundle_root,
            budget=EvaluationBudget(),
        )
        scope = dict(self._scope)
        for name, value in zip(self.params, args, strict=True):
            scope[name] = value
            run.note_input(value)
        return _run(run, self._node.body, scope, run.label)

    def __repr__(self) -> str:
        return f"SafeLambda({', '.join(self.params)})"


class _Interpreter:
    """Evaluates one parsed expression; every name, attribute and call goes through an allow-list.

    Every value it builds is charged to ``budget`` (:class:`EvaluationBudget`); operations that
    could make a large value from small ones are checked before they run.
    """

    def __init__(
        self,
        label: str,
        namespace: Mapping[str, Any],
        refs: Mapping[str, Any],
        *,
        bundle_root: str | Path | None = None,
        budget: EvaluationBudget | None = None,
    ):
        self.label = label
        self.namespace = namespace
        self.refs = refs
        self.bundle_root = Path(os.path.realpath(bundle_root)) if bundle_root is not None else None
        self.budget = budget if budget is not None else EvaluationBudget()
        self.tensor_limit = MAX_TENSOR_ITEMS

    def refuse(self, reason: str) -> NoReturn:
        raise UnsafeConfigError(f"{self.label} is not allowed: {reason}")

    def spend(self, amount: int) -> None:
        problem = self.budget.spend(amount)
        if problem:
            self.refuse(problem)

    def note_input(self, value: Any) -> None:
        """Tensors the expression is given (references, lambda arguments) raise its tensor limit."""
        numel = _numel(value)
        if numel is not None and numel > self.tensor_limit:
            self.tensor_limit = numel

    def check_built(self, value: Any) -> Any:
        numel = _numel(value)
        if numel is not None:
            if numel > self.tensor_limit:
                self.refuse(
                    f"makes an array of {numel:,} elements, more than the {self.tensor_limit:,} allowed"
                )
        else:
            self.spend(_size(value))
        return value

    # values ---------------------------------------------------------------------------

    def value(self, node: ast.AST, scope: dict[str, Any]) -> Any:
        raw = self.raw(node, scope)
        if isinstance(raw, ModulePath):
            return self.resolve_path(raw.path)
        return raw

    def resolve_path(self, path: str) -> Any:
        if path in FILE_FUNCTIONS:
            return functools.partial(self.file_function, path)
        if path in REPLACED_GLOBALS:
            return REPLACED_GLOBALS[path]
        if path in ALLOWED_GLOBALS:
            obj = _import_object(path)
            if obj is None:
                raise ModelFileError(f"{self.label}: '{path}' does not exist in the installed version")
            return obj
        self.refuse(
            f"uses '{path}', which is not on the allow-list (components are built from _target_ items)"
        )

    def raw(self, node: ast.AST, scope: dict[str, Any]) -> Any:
        """The value of ``node``; a :class:`ModulePath` for (parts of) module names, resolved by the caller."""
        self.spend(1)
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
        result = handler(node, scope)
        if isinstance(node, ast.Subscript) and _is_ref_subscript(node):
            return result  # an item the config built; not made by this expression
        if isinstance(node, ast.Lambda) or isinstance(result, (ModulePath, Iterator)):
            return result
        return self.check_built(result)

    def name(self, name: str, scope: dict[str, Any]) -> Any:
        if name in scope:
            return scope[name]
        if name.startswith("_"):
            self.refuse(f"uses the name '{name}', which is not allowed")
        if name in self.namespace:
            bound = self.namespace[name]
            if isinstance(bound, RefusedImport):
                self.refuse(bound.problem)
            return bound
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
            self.spend(1)
            yield item

    # files ----------------------------------------------------------------------------

    def bundle_path(self, path: Any, function: str) -> Path:
        """``path`` resolved (links followed); refused unless it lies inside the bundle folder."""
        if not isinstance(path, (str, Path)):
            self.refuse(f"calls {function} with a {type(path).__name__}, not a path")
        if self.bundle_root is None:
            self.refuse(f"calls {function}, which is allowed only inside a bundle folder")
        text = str(path)
        if ".." in Path(text).parts:
            self.refuse(f"calls {function} on {text!r}, which has a '..' component")
        resolved = Path(os.path.realpath(os.path.join(self.bundle_root, text)))
        if not resolved.is_relative_to(self.bundle_root):
            self.refuse(f"calls {function} on {text!r}, outside the bundle folder")
        return resolved

    def file_function(self, path: str, *args: Any, **kwargs: Any) -> Any:
        import glob

        if path == "glob.glob":
            if args[1:] or set(kwargs) - {"recursive"}:
                self.refuse("calls glob.glob with other arguments than a pattern (and recursive)")
            pattern = str(args[0]) if args else ""
            if ".." in Path(pattern).parts:  # also after a wildcard: '*/../../etc/*'
                self.refuse(f"calls glob.glob on {pattern!r}, which has a '..' component")
            literal = pattern.split("*")[0].split("?")[0].split("[")[0]
            base = self.bundle_path(literal or ".", "glob.glob")
            if not os.path.isabs(pattern):
                pattern = os.path.join(str(self.bundle_root), pattern)
            found = []
            for match in glob.iglob(pattern, recursive=bool(kwargs.get("recursive", False))):
                if Path(os.path.realpath(match)).is_relative_to(self.bundle_root):
                    found.append(match)
                self.spend(1)
                if len(found) > MAX_GLOB_RESULTS:
                    self.refuse(f"glob.glob finds more than {MAX_GLOB_RESULTS} files")
            del base
            return found
        if path == "torch.load":
            # weights-only, onto the CPU; the device arguments are ignored on purpose (published
            # DiNTS configs ask for cuda; the engine moves the network itself)
            target = self.bundle_path(args[0] if args else kwargs.get("f"), "torch.load")
            return load_checkpoint(target)
        if len(args) != 1 or kwargs:
            self.refuse(f"calls {path} with other arguments than one path")
        target = self.bundle_path(args[0], path)
        return {
            "os.path.exists": os.path.exists,
            "os.path.isfile": os.path.isfile,
            "os.path.isdir": os.path.isdir,
        }[path](target)

    # nodes ----------------------------------------------------------------------------

    def node_Subscript(self, node: ast.Subscript, scope: dict[str, Any]) -> Any:
        if isinstance(node.value, ast.Name) and node.value.id == REFS_NAME:
            if not (isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
                self.refuse(f"uses '{REFS_NAME}' other than as an @reference")
            key = node.slice.value
            if key not in self.refs:
                raise ModelFileError(f"{self.label} refers to '@{key}', which is not defined in the config")
            value = self.refs[key]
            self.note_input(value)
            return value
        container = self.value(node.value, scope)
        index = self.value(node.slice, scope)
        if _numel(container) is not None:
            for part in index if isinstance(index, tuple) else (index,):
                if isinstance(part, (list, tuple)) and len(part) > 1024:
                    self.refuse("indexes an array with more than 1024 positions")
        return container[index]

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
                self.spend(len(mapping))
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
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right))
        if op is ast.Pow and ints and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_POWER_BITS:
                self.refuse(f"computes a power with more than {MAX_POWER_BITS} bits (MAX_POWER_BITS)")
        if op is ast.Mult:
            if ints and left.bit_length() + right.bit_length() > MAX_POWER_BITS:
                self.refuse(f"computes a product with more than {MAX_POWER_BITS} bits (MAX_POWER_BITS)")
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
                    if len(seq) * count > self.budget.units:
                        self.refuse(
                            f"repeats a sequence to {len(seq) * count:,} items, more than the budget left "
                            "(MAX_EVALUATION_UNITS)"
                        )
        left_shape, right_shape = _shape(left), _shape(right)
        if left_shape is not None and right_shape is not None:
            import torch

            try:
                result_items = math.prod(torch.broadcast_shapes(left_shape, right_shape))
            except RuntimeError:
                result_items = 0  # the operation itself reports the mismatch
            if result_items > self.tensor_limit:
                self.refuse(
                    f"makes an array of {result_items:,} elements, more than the {self.tensor_limit:,} allowed"
                )
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

    def node_Compare(self, node: ast.Compare, scope: dict[str, Any]) -> Any:
        left = self.value(node.left, scope)
        if len(node.ops) == 1:  # tensors compare element-wise (torch.where(x > 0, ...))
            return _COMPARISONS[type(node.ops[0])](left, self.value(node.comparators[0], scope))
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.value(comparator, scope)
            if not _COMPARISONS[type(op)](left, right):
                return False
            left = right
        return True

    def node_IfExp(self, node: ast.IfExp, scope: dict[str, Any]) -> Any:
        branch = node.body if self.value(node.test, scope) else node.orelse
        return self.value(branch, scope)

    def node_Lambda(self, node: ast.Lambda, scope: dict[str, Any]) -> SafeLambda:
        arguments = node.args
        if (
            arguments.vararg
            or arguments.kwarg
            or arguments.kwonlyargs
            or arguments.defaults
            or arguments.posonlyargs
        ):
            self.refuse("uses a lambda with other than plain positional parameters")
        if any(a.arg.startswith("_") for a in arguments.args):
            self.refuse("binds a name starting with '_'")
        return SafeLambda(self, node, scope)

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

    def node_GeneratorExp(self, node: ast.GeneratorExp, scope: dict[str, Any]) -> list[Any]:
        return self.node_ListComp(node, scope)  # type: ignore[arg-type]

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
        self.check_call(function, args, kwargs)
        return function(*args, **kwargs)

    def check_call(self, function: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Refuse calls whose result could be much larger than their arguments, before they run."""
        for value in [*args, *kwargs.values()]:
            if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset, range)):
                self.spend(len(value))  # the call goes through its argument
        owner = getattr(function, "__self__", None)
        name = getattr(function, "__name__", "")
        if isinstance(owner, str):
            if name == "join" and args:
                parts = list(args[0]) if not isinstance(args[0], (list, tuple)) else args[0]
                if not all(isinstance(p, str) for p in parts):
                    return  # str.join raises TypeError itself
                predicted = sum(len(p) for p in parts) + len(owner) * max(0, len(parts) - 1)
            elif (
                name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str)
            ):
                occurrences = owner.count(args[0]) if args[0] else len(owner) + 1
                predicted = len(owner) + occurrences * max(0, len(args[1]) - len(args[0]))
            elif name == "zfill" and args and isinstance(args[0], int):
                predicted = args[0]
            else:
                return
            if predicted > self.budget.units:
                self.refuse(
                    f"str.{name} would make {predicted:,} characters, more than the budget left (MAX_EVALUATION_UNITS)"
                )

    def callee(self, func: ast.AST, scope: dict[str, Any]) -> Callable[..., Any]:
        raw = self.raw(func, scope)
        if isinstance(raw, ModulePath):
            return self.resolve_path(raw.path)
        if isinstance(func, ast.Name):
            if func.id not in scope and SAFE_BUILTINS.get(func.id) is raw:
                return raw
            if func.id not in scope and isinstance(raw, functools.partial) and raw.func == self.file_function:
                return raw
            self.refuse(f"calls the variable '{func.id}'")
        if isinstance(func, ast.Attribute):
            if isinstance(raw, functools.partial) and raw.func == self.file_function:
                return raw
            if not (inspect.ismethod(raw) or inspect.isbuiltin(raw) or callable(raw)):
                self.refuse(f"calls '.{func.attr}', which is not a method")
            return raw  # a method that self.attribute() allowed for this object's type, or a module function
        if _is_ref_subscript(func):
            self.refuse(
                f"calls the component '@{func.slice.value}' (only the engine calls what the config built)"  # type: ignore[attr-defined]
            )
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


def _is_ref_subscript(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == REFS_NAME
        and isinstance(node.slice, ast.Constant)
    )


def _run(interpreter: _Interpreter, node: ast.AST, scope: dict[str, Any], shown: str) -> Any:
    """Evaluate ``node``; errors become one-line :class:`UnsafeConfigError`/:class:`ModelFileError`."""
    try:
        with interpreter.budget.running():
            return interpreter.value(node, scope)
    except MedSegNASError:
        raise
    except RecursionError:
        raise UnsafeConfigError(f"{shown} is too deeply nested") from None
    except MemoryError:
        raise UnsafeConfigError(f"{shown} needs too much memory") from None
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise ModelFileError(f"{shown} failed: {type(exc).__name__}: {message}") from exc


def evaluate_expression(
    expression: str,
    refs: Mapping[str, Any] | None = None,
    *,
    namespace: Mapping[str, Any] | None = None,
    label: str | None = None,
    bundle_root: str | Path | None = None,
    budget: EvaluationBudget | None = None,
) -> Any:
    """Evaluate a bundle ``$`` expression without ``eval``, allowing only the documented subset.

    Args:
        expression: the config string (``"$@network_def.to(@device)"``); the ``$`` is optional.
            ``@id`` references are looked up in ``refs``; text already rewritten by MONAI's
            ReferenceResolver (``__local_refs['id']``) works too.
        refs: resolved config items by id (``"network_def"``, ``"displayable_configs::highres"``).
        namespace: names bound by the config's imports; default :func:`default_namespace`.
        label: how messages name the expression (default: the expression itself).
        bundle_root: the bundle folder: ``glob.glob``, ``os.path.exists/isfile/isdir`` and
            ``torch.load`` may only look inside it (without one they are refused).
        budget: shared by all expressions of one config (default: a fresh one).

    Returns:
        The value, as MONAI's ``eval`` would compute it (except that ``torch.load`` is
        weights-only and loads onto the CPU). A ``lambda`` becomes a :class:`SafeLambda`.

    Raises:
        UnsafeConfigError: the expression uses something outside the allow-list, or exceeds a
            limit (named in the message); nothing refused ran.
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
        shown,
        namespace if namespace is not None else default_namespace(),
        normalized_refs,
        bundle_root=bundle_root,
        budget=budget,
    )
    return _run(interpreter, tree.body, {}, shown)
