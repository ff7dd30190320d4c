"""Reading MONAI bundles without running code from them.

A bundle is a folder ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``),
``models/model.pt``, ``docs/README.md``. :func:`inspect_bundle` reads what the model registry
and the segmentation engine need to know about one; :func:`check_config` lists everything in a
config that could run code; :func:`safe_parse_bundle_config` returns a MONAI ``ConfigParser``
whose ``$`` expressions go through :mod:`.safe_expr` (no ``eval``), whose ``_target_``
components are allow-listed, and whose ``%`` macros may only read files inside the bundle.

Typical use::

    info = inspect_bundle(folder)
    parser = safe_parse_bundle_config(folder, ids=["network_def", "preprocessing"])
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_weights(info.weights))
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigComponent, ConfigExpression, ConfigItem, ConfigParser, ReferenceResolver
from monai.bundle.utils import MACRO_KEY
from monai.utils import instantiate

from .bundle_root import METADATA_NAME, find_bundle_root
from .capabilities import (
    argument_problems,
    build_engine_io_step,
    component_rule,
    network_size,
)
from .safe_expr import (
    EvaluationBudget,
    ModulePath,
    RefusedImport,
    check_expression,
    component_problems,
    default_namespace,
    evaluate_expression,
    import_bindings,
    import_names,
    is_import_statement,
    resolve_target,
    substitute_references,
)
from .safety import ModelFileError, UnsafeConfigError

__all__ = [
    "CONFIG_SUFFIXES",
    "INFERENCE_CONFIG_NAMES",
    "BundleInfo",
    "SafeConfigParser",
    "load_config_file",
    "find_bundle_root",
    "inspect_bundle",
    "check_config",
    "inference_path_problems",
    "safe_parse_bundle_config",
]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
INFERENCE_CONFIG_NAMES = tuple(f"inference{suffix}" for suffix in CONFIG_SUFFIXES)
WEIGHTS_NAMES = ("model.pt", "model.pth")
#: Where bundles list the files downloaded separately (weights among them).
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
META_KEY = ConfigParser.meta_key


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML bundle config (``yaml.safe_load``: YAML tags cannot build objects).

    Raises:
        ModelFileError: missing file, unknown suffix, invalid JSON/YAML, not a mapping, or
            PyYAML not installed for a YAML file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ModelFileError(f"config file {path} is not .json, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"config file {path} could not be read: {exc}") from None
    if suffix == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(
                f"config file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    else:
        try:
            import yaml
        except ImportError:
            raise ModelFileError(f"reading {path} needs PyYAML: pip install pyyaml") from None
        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ModelFileError(
                f"config file {path} is not valid YAML: {' '.join(str(exc).split())}"
            ) from None
    if not isinstance(content, dict):
        raise ModelFileError(
            f"config file {path} holds a {type(content).__name__}, not a mapping of settings"
        )
    return content


# --------------------------------------------------------------------------- safe parser


class _SafeExpression(ConfigExpression):
    """A ``$`` config item evaluated by :func:`~.safe_expr.evaluate_expression` instead of ``eval``."""

    def __init__(self, config: Any, id: str = "", globals: dict | None = None, *, owner: Any = None) -> None:
        super().__init__(config=config, id=id, globals=globals)
        self.original = config  # the text before MONAI rewrites @references, for messages
        self.owner = owner  # the SafeConfigParser: bundle folder and evaluation budget

    def evaluate(self, globals: dict | None = None, locals: dict | None = None) -> Any:
        value = self.get_config()
        if not self.is_expression(value):
            return None
        label = f"config item '{self.id}' expression {self.original!r}"
        if self.is_import_statement(value):
            # MONAI evaluates every import before any item; a refused one only matters when an
            # expression that is evaluated uses a name it binds (then that expression is refused).
            try:
                bindings = import_bindings(value)
            except UnsafeConfigError as exc:
                refused = RefusedImport(f"config item '{self.id}': {exc.problem}")
                self.globals.update({name: refused for name in import_names(value)})
                return None
            self.globals.update(bindings)
            return next(iter(bindings.values()))
        refs = (globals or {}).get(ReferenceResolver._vars, {})
        return evaluate_expression(
            value,
            refs,
            namespace=self.globals,
            label=label,
            bundle_root=getattr(self.owner, "_bundle_root", None),
            budget=getattr(self.owner, "budget", None),
        )


class _SafeComponent(ConfigComponent):
    """A ``_target_`` config item built only when its target and arguments pass the allow-list.

    Order: the target is looked up in the capability list, ``_mode_`` must be ``default``, the
    resolved arguments are checked against the component's rules, a network is sized on the
    meta device, and only then is the component built. Engine I/O steps (LoadImage, SaveImage)
    are never built: an inert stand-in takes their place.
    """

    def __init__(self, *args: Any, owner: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def resolve_module_name(self) -> Any:
        try:
            return resolve_target(self.get_config().get("_target_"))
        except UnsafeConfigError as exc:
            raise UnsafeConfigError(f"config item '{self.id}': {exc.problem}") from None

    def instantiate(self, **kwargs: Any) -> object:
        if not self.is_instantiable(self.get_config()) or self.is_disabled():
            return None
        component = self.resolve_module_name()
        name, rule = component_rule(component)  # type: ignore[misc]  (resolve_target checked it)
        mode = self.get_config().get("_mode_", "default")
        if mode != "default":
            raise UnsafeConfigError(f"config item '{self.id}': _mode_ {mode!r} is not allowed")
        args = self.resolve_args()
        args.update(kwargs)
        problems = argument_problems(name, rule, args, resolved=True)
        if problems:
            raise UnsafeConfigError(f"config item '{self.id}': {problems[0]}")
        if rule.kind == "engine_io":
            return build_engine_io_step(name, args)
        if rule.kind == "network":
            import torch

            owner = self.owner
            size = network_size(
                name,
                component,
                args,
                in_channels=args.get("in_channels"),
                patch=getattr(owner, "patch", None),
                batch=getattr(owner, "windows_per_batch", 1),
            )
            if size.problem:
                raise UnsafeConfigError(f"config item '{self.id}': {size.problem}")
            if owner is not None:  # for the engine's memory plan (inference/plan.py)
                owner.network_sizes[self.id] = size
            if getattr(owner, "meta_networks", False):  # a dry build: no weights are allocated
                with torch.device("meta"):
                    return instantiate(component, mode, **args)
        try:
            # ``component`` is the checked object itself, so MONAI imports nothing by name.
            return instantiate(component, mode, **args)
        except RuntimeError as exc:
            reason = exc.__cause__ or exc
            raise ModelFileError(
                f"config item '{self.id}' ({component.__name__}) could not be built: "
                f"{type(reason).__name__}: {' '.join(str(reason).split())[:300]}"
            ) from exc


class SafeConfigParser(ConfigParser):
    """MONAI's ``ConfigParser`` with allow-listed expressions, components and macros; never ``eval``.

    Args:
        config: the parsed config (as from :func:`load_config_file`).
        bundle_root: the bundle folder; ``%file::id`` macros may only read files inside it
            (relative paths are taken from it). Without one, macros may only name relative
            paths without ``..``.
        excludes: as for ``ConfigParser``.
    """

    def __init__(self, config: Any = None, *, bundle_root: str | Path | None = None, excludes: Any = None):
        self._bundle_root = Path(bundle_root).resolve() if bundle_root is not None else None
        #: shared by every expression of this config (see :class:`~.safe_expr.EvaluationBudget`)
        self.budget = EvaluationBudget()
        super().__init__(config=config, excludes=excludes, globals=False)
        self.globals = dict(default_namespace())
        self.patch, self.windows_per_batch = _network_input(config if isinstance(config, Mapping) else {})
        #: build networks on the meta device (see :func:`inference_path_problems`)
        self.meta_networks = False
        #: config id -> the size check of each network built (capabilities.NetworkSize)
        self.network_sizes: dict[str, Any] = {}

    def _do_parse(self, config: Any, id: str = "") -> None:
        if isinstance(config, (dict, list)):
            for _, sub_id, value in self.ref_resolver.iter_subconfigs(id=id, config=config):
                self._do_parse(config=value, id=sub_id)
        if ConfigComponent.is_instantiable(config):
            self.ref_resolver.add_item(_SafeComponent(config=config, id=id, locator=self.locator, owner=self))
        elif ConfigExpression.is_expression(config):
            self.ref_resolver.add_item(
                _SafeExpression(config=config, id=id, globals=self.globals, owner=self)
            )
        else:
            self.ref_resolver.add_item(ConfigItem(config=config, id=id))

    def _do_resolve(self, config: Any, id: str = "") -> Any:
        if isinstance(config, (dict, list)):
            for key, sub_id, value in self.ref_resolver.iter_subconfigs(id=id, config=config):
                config[key] = self._do_resolve(value, sub_id)  # type: ignore[index]
        if isinstance(config, str):
            config = self.resolve_relative_ids(id, config)
            if config.startswith(MACRO_KEY):
                path, ids = self.split_path_id(config[len(MACRO_KEY) :])
                source = self.get() if not path else load_config_file(self._macro_file(path, config, id))
                try:
                    return copy.deepcopy(ConfigParser(config=source, globals=False)[ids])
                except (KeyError, IndexError, ValueError) as exc:
                    raise ModelFileError(
                        f"config item '{id}': macro {config!r} names a missing item ({exc})"
                    ) from None
        return config

    def _macro_file(self, path: str, macro: str, item_id: str) -> Path:
        file = Path(path)
        if self._bundle_root is None:
            if file.is_absolute() or ".." in file.parts:
                raise UnsafeConfigError(
                    f"config item '{item_id}': macro {macro!r} reads a file outside the bundle"
                )
            return file
        resolved = (file if file.is_absolute() else self._bundle_root / file).resolve()
        if not resolved.is_relative_to(self._bundle_root):
            raise UnsafeConfigError(
                f"config item '{item_id}': macro {macro!r} reads a file outside the bundle"
            )
        return resolved


def _network_input(config: Mapping[str, Any]) -> tuple[tuple[int, ...] | None, int]:
    """(patch in voxels, windows per batch) of one forward pass, from literal config values.

    From the ``inferer``'s ``roi_size``/``sw_batch_size`` when they are plain numbers, else the
    metadata's input ``spatial_shape``; used only for the activation-memory estimate.
    """
    inferer = config.get("inferer")
    patch: tuple[int, ...] | None = None
    batch = 1
    if isinstance(inferer, Mapping):
        roi = inferer.get("roi_size")
        if isinstance(roi, int) and not isinstance(roi, bool) and roi > 0:
            patch = (roi,) * 3
        elif isinstance(roi, list) and roi and all(isinstance(r, int) and 0 < r <= 1024 for r in roi):
            patch = tuple(roi)
        windows = inferer.get("sw_batch_size")
        if isinstance(windows, int) and not isinstance(windows, bool) and 0 < windows <= 64:
            batch = windows
    if patch is None:
        meta = config.get(META_KEY)
        image = (((meta or {}).get("network_data_format") or {}).get("inputs") or {}).get("image") or {}
        shape = image.get("spatial_shape") if isinstance(image, Mapping) else None
        if isinstance(shape, list) and shape and all(isinstance(s, int) and 0 < s <= 1024 for s in shape):
            patch = tuple(shape)
    return patch, batch


# --------------------------------------------------------------------------------- checks


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _dependency_closure(parser: ConfigParser, ids: Iterable[str]) -> list[str]:
    """``ids`` and every item they reference, transitively (the items MONAI would resolve)."""
    todo = [ReferenceResolver.normalize_id(i) for i in ids]
    seen: list[str] = []
    while todo:
        item_id = todo.pop()
        if item_id in seen:
            continue
        if item_id not in parser:
            raise ModelFileError(f"the bundle config has no item '{item_id}'")
        seen.append(item_id)
        for text in _strings(parser[item_id]):
            todo.extend(ReferenceResolver.match_refs_pattern(text))
    return seen


def _item_problems(
    value: Any, item_id: str, namespace: Mapping[str, ModulePath], refused: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Problems of one config item; ``refused``: name -> problem of the refused import binding it."""
    refused = refused or {}
    if isinstance(value, dict):
        if "_target_" in value:
            yield from (f"{item_id}: {problem}" for problem in component_problems(value))
        for key, item in value.items():
            yield from _item_problems(item, f"{item_id}::{key}", namespace, refused)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _item_problems(item, f"{item_id}::{index}", namespace, refused)
    elif isinstance(value, str) and value.startswith("$") and not is_import_statement(value):
        used = _names_used(value) & set(refused)
        yield from (refused[name] for name in sorted(used))
        for problem in check_expression(value, namespace=namespace):
            if not any(f"the name '{name}'" in problem for name in used):
                yield f"{item_id}: {value!r} {problem}"


def _names_used(expression: str) -> set[str]:
    """Plain names an expression reads (to find which imports it needs)."""
    import ast

    try:
        tree = ast.parse(substitute_references(expression).strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def check_config(
    config: Mapping[str, Any],
    *,
    ids: Iterable[str] | None = None,
    bundle_root: str | Path | None = None,
) -> list[str]:
    """Every problem that would stop an untrusted bundle config, found before anything is built.

    Checks each ``$`` expression (:func:`~.safe_expr.check_expression`), each ``_target_``
    (:func:`~.safe_expr.resolve_target`) and its arguments, each import statement and each ``%``
    macro (files inside the bundle only; macro content is checked too).

    Args:
        config: the parsed bundle config.
        ids: check only these items and what they reference (e.g. ``["network_def",
            "preprocessing"]`` for a caller that builds just those); default: the whole config.
            A refused import statement is reported when an expression among them uses a name
            it binds (``$import pandas as pd`` for a datalist the engine never builds does not
            matter); with the whole config, every refused import is reported.
        bundle_root: the bundle folder, for macros.

    Returns:
        One line per problem, ``"<item id>: <what> <why>"``; empty when the config is allowed.

    Raises:
        ModelFileError: an item of ``ids`` (or one it references) does not exist, or a macro
            names a missing file or item.
    """
    problems: list[str] = []
    parser = SafeConfigParser(copy.deepcopy(dict(config)), bundle_root=bundle_root)
    try:
        parser.resolve_macro_and_relative_ids()
    except UnsafeConfigError as exc:
        problems.append(exc.problem)
    resolved = parser.get()
    namespace: dict[str, ModulePath] = dict(default_namespace())
    imports = [
        (i, t) for i, t in _all_strings_with_ids(resolved, "") if t.startswith("$") and is_import_statement(t)
    ]
    refused: dict[str, str] = {}
    for item_id, statement in imports:
        try:
            namespace.update(import_bindings(statement))
        except UnsafeConfigError as exc:
            problem = f"{item_id}: {exc.problem}"
            refused.update({name: problem for name in import_names(statement)})
            if ids is None:
                problems.append(problem)
    selected = [k for k in resolved if k != META_KEY] if ids is None else _dependency_closure(parser, ids)
    for item_id in selected:
        problems.extend(_item_problems(parser[item_id], item_id, namespace, refused))
    # The bundle's own code first: it is what --trust is really about, and an argument problem
    # further on (e.g. the string "True" for a flag) would hide it in a one-line message.
    return sorted(dict.fromkeys(problems), key=lambda problem: "bundle code" not in problem)


def inference_path_problems(root: str | Path, config: Mapping[str, Any], ids: Iterable[str]) -> list[str]:
    """What stops the items ``ids`` of an untrusted bundle, checked statically *and* by a dry build.

    The static check (:func:`check_config`) cannot know what an expression computes (a
    ``glob.glob`` pattern, a size); so when it passes, each item is built the way the engine
    builds it, with networks on the ``meta`` device (no weights allocated) and every limit in
    force. Only refusals (:class:`UnsafeConfigError`) are problems: an item that fails for another
    reason (a missing file, an argument MONAI rejects) fails the same way in ``segment``.

    Args:
        root: the bundle folder; config: its inference config; ids: the items the engine builds.

    Returns:
        One line per problem, ``"<item id>: <rule>"``; empty when the whole path passes.
    """
    import logging

    root = Path(root)
    ids = [i for i in ids if i in config]
    problems = check_config(config, ids=ids, bundle_root=root)
    if problems:
        return problems
    settings = copy.deepcopy(dict(config))
    settings["bundle_root"] = str(root)
    metadata = root / "configs" / METADATA_NAME
    if META_KEY not in settings and metadata.is_file():
        settings[META_KEY] = load_config_file(metadata)
    for item_id in ids:  # each on its own: a failure of one does not hide problems of another
        parser = SafeConfigParser(copy.deepcopy(settings), bundle_root=root)
        parser.meta_networks = True
        try:
            with warnings.catch_warnings():  # MONAI's deprecation notes are not the user's business here
                warnings.simplefilter("ignore")
                parser.get_parsed_content(item_id)
        except UnsafeConfigError as exc:
            problems.append(exc.problem)
        except Exception as exc:  # not a safety matter; segment reports it with its own message
            logging.getLogger(__name__).debug("dry build of %s failed: %s", item_id, exc)
    return list(dict.fromkeys(problems))


def _all_strings_with_ids(value: Any, item_id: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield item_id, value
    elif isinstance(value, (dict, list)):
        for _key, sub_id, item in ReferenceResolver.iter_subconfigs(item_id, value):
            yield from _all_strings_with_ids(item, sub_id)


def safe_parse_bundle_config(
    source: str | Path | Mapping[str, Any],
    *,
    trusted: bool = False,
    ids: Iterable[str] | None = None,
    bundle_root: str | Path | None = None,
) -> ConfigParser:
    """A parser for a bundle's inference config that builds components only after :func:`check_config`.

    Args:
        source: a bundle folder (its inference config is used), a config file, or a config dict.
        trusted: return MONAI's own ``ConfigParser`` (runs ``eval`` and imports anything): only
            for bundles the user marked trusted (``--trust``).
        ids: items the caller will build (see :func:`check_config`); default: everything.
        bundle_root: the bundle folder; found from ``source`` when it is a folder or a file in
            ``configs/``. When known, it replaces the config's ``bundle_root`` (published configs
            say ``"."``) and ``configs/metadata.json`` is loaded as ``_meta_``.

    Returns:
        A ``ConfigParser`` (a :class:`SafeConfigParser` unless trusted); use
        ``get_parsed_content(id)`` as with MONAI.

    Raises:
        UnsafeConfigError: the config has problems (the message names the first and counts them).
        ModelFileError: missing or invalid config file.
    """
    if isinstance(source, Mapping):
        config = copy.deepcopy(dict(source))
        root = Path(bundle_root) if bundle_root is not None else None
        shown = "bundle config"
    else:
        path = Path(source)
        if path.is_dir():
            root = find_bundle_root(path)
            path = _find_inference_config(root)
        else:
            root = path.parent.parent if path.parent.name == "configs" else path.parent
        root = Path(bundle_root) if bundle_root is not None else root
        config = load_config_file(path)
        shown = str(path)
    if root is not None:
        config["bundle_root"] = str(root)
        metadata = root / "configs" / METADATA_NAME
        if META_KEY not in config and metadata.is_file():
            config[META_KEY] = load_config_file(metadata)
    if trusted:
        return ConfigParser(config)
    problems = check_config(config, ids=ids, bundle_root=root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UnsafeConfigError(f"{shown} is not safe to run: {problems[0]}{more}")
    return SafeConfigParser(config, bundle_root=root)


# -------------------------------------------------------------------------------- inspect


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle says about itself (``configs/metadata.json``) and where its pieces are.

    Attributes:
        root: the bundle folder.
        name, version, description: from the metadata (name defaults to the folder name).
        inference_config: ``configs/inference.json`` (or ``.yaml``/``.yml``).
        weights: ``models/model.pt``; None when absent and not required.
        label_names: output channel -> name, from ``network_data_format.outputs.pred.channel_def``
            (0 is usually ``"background"``); empty when the metadata has none.
        in_channels, out_channels: ``num_channels`` of the first input / the ``pred`` output.
        modality: e.g. ``"CT"``; input_format: e.g. ``"hounsfield"``.
        spatial_shape: the input patch shape the network was trained on (voxels), if given.
        monai_version: the MONAI version the bundle was made with.
        readme: ``docs/README.md`` if present.
        metadata: the whole metadata dict.
    """

    root: Path
    name: str
    version: str
    description: str
    inference_config: Path
    weights: Path | None
    label_names: dict[int, str]
    in_channels: int | None
    out_channels: int | None
    modality: str | None
    input_format: str | None
    spatial_shape: tuple[int, ...] | None
    monai_version: str | None
    readme: Path | None
    metadata: dict[str, Any] = field(repr=False)


def _find_inference_config(root: Path) -> Path:
    for name in INFERENCE_CONFIG_NAMES:
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    raise ModelFileError(f"bundle {root} has no configs/inference.json (or .yaml) to run inference with")


def _int_or_none(value: Any, what: str, path: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFileError(f"{path}: {what} is {value!r}, not a whole number")
    return value


def _listed_weights(root: Path) -> list[str]:
    """The ``models/*.pt|pth`` files a bundle's ``large_files.yml|yaml|json`` lists (relative paths)."""
    for name in LARGE_FILES_NAMES:
        if (root / name).is_file():
            try:
                entries = load_config_file(root / name).get("large_files") or []
            except Exception:  # an unreadable list only loses the hint
                return []
            paths = [str(e.get("path", "")) for e in entries if isinstance(e, dict)]
            return [
                p
                for p in paths
                if p.startswith("models/") and p.endswith((".pt", ".pth")) and "/" not in p[7:]
            ]
    return []


def inspect_bundle(folder: str | Path, *, require_weights: bool = True) -> BundleInfo:
    """Read a bundle's metadata and locate its inference config and weights; runs nothing.

    Args:
        folder: the bundle folder (or a folder whose only sub-folder is the bundle).
        require_weights: raise when ``models/model.pt`` is missing (many published bundles list
            it in ``large_files.yml`` to be downloaded separately).

    Raises:
        ModelFileError: a missing or invalid piece, naming the file and what is wrong.
    """
    root = find_bundle_root(folder)
    metadata_path = root / "configs" / METADATA_NAME
    metadata = load_config_file(metadata_path)
    inference_config = _find_inference_config(root)

    # models/model.pt by convention; some bundles name theirs otherwise and list it in
    # large_files (pediatric_abdominal_ct_segmentation: models/dynunet_FT.pt).
    expected = [f"models/{n}" for n in WEIGHTS_NAMES] + _listed_weights(root)
    weights = next((root / p for p in expected if (root / p).is_file()), None)
    if weights is None and require_weights:
        named = expected[len(WEIGHTS_NAMES)] if len(expected) > len(WEIGHTS_NAMES) else expected[0]
        large = next((n for n in LARGE_FILES_NAMES if (root / n).is_file()), None)
        hint = f" (the bundle lists its large files in {large}: python -m monai.bundle download fetches them)"
        hint = hint if large else ""
        raise ModelFileError(f"bundle {root} has no weights file {named}{hint}")

    data_format = metadata.get("network_data_format") or {}
    if not isinstance(data_format, dict):
        raise ModelFileError(f"{metadata_path}: network_data_format is not a mapping")
    inputs = data_format.get("inputs") or {}
    outputs = data_format.get("outputs") or {}
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        raise ModelFileError(f"{metadata_path}: network_data_format inputs/outputs are not mappings")
    image = inputs.get("image") or next(iter(inputs.values()), {})
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    if not isinstance(image, dict) or not isinstance(pred, dict):
        raise ModelFileError(f"{metadata_path}: network_data_format input/output entries are not mappings")

    channel_def = pred.get("channel_def") or {}
    if not isinstance(channel_def, dict):
        raise ModelFileError(f"{metadata_path}: outputs.pred.channel_def is not a mapping of channel -> name")
    label_names: dict[int, str] = {}
    for key, name in channel_def.items():
        try:
            label_names[int(key)] = str(name)
        except ValueError:
            raise ModelFileError(
                f"{metadata_path}: channel_def key {key!r} is not a channel number"
            ) from None
    label_names = dict(sorted(label_names.items()))

    shape = image.get("spatial_shape")
    spatial_shape = None
    if (
        isinstance(shape, list)
        and shape
        and all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
    ):
        spatial_shape = tuple(shape)

    readme = root / "docs" / "README.md"
    return BundleInfo(
        root=root,
        name=str(metadata.get("name") or root.name),
        version=str(metadata.get("version") or ""),
        description=str(metadata.get("description") or metadata.get("task") or ""),
        inference_config=inference_config,
        weights=weights,
        label_names=label_names,
        in_channels=_int_or_none(image.get("num_channels"), "inputs num_channels", metadata_path),
        out_channels=_int_or_none(pred.get("num_channels"), "outputs num_channels", metadata_path),
        modality=str(image["modality"]) if image.get("modality") else None,
        input_format=str(image["format"]) if image.get("format") else None,
        spatial_shape=spatial_shape,
        monai_version=str(metadata["monai_version"]) if metadata.get("monai_version") else None,
        readme=readme if readme.is_file() else None,
        metadata=metadata,
    )
