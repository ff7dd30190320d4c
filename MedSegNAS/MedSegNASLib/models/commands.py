"""``medsegnas models list|import|download|catalog|info|trust|remove``: the model registry from a shell.

``import`` and ``download`` are also jobs (``--run-dir RUN`` / ``--detach``, kinds ``model-import``
and ``model-download``): the Slicer panel runs them as background workers like every long task
(a Python thread inside Slicer barely runs: the GUI's main thread holds the GIL while idle).
Their ``done`` result holds ``model`` (the registry id), ``path`` and ``trust_state``; a cancelled
download keeps its partial file and resumes when started again.

The registry lives in ``$MEDSEGNAS_HOME/models`` (default ``~/.medsegnas/models``; ``--home``
overrides both); the catalog of downloadable bundles is ``$MEDSEGNAS_CATALOG`` or the shipped
``catalog.json`` (``--catalog`` overrides both).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..jobs.runner import add_job_arguments, run_job_command
from .registry import (
    TRUST_COMMAND,
    Checksum,
    ModelRecord,
    ModelRegistry,
    ProgressCallback,
    human_size,
    load_catalog,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models`` with its actions."""
    models = subparsers.add_parser(
        "models",
        help="import, download, list and remove segmentation models (MONAI bundles)",
        description="Manage the model registry: MONAI bundles imported once, then used by id with "
        "'medsegnas segment --model ID'. Importing never runs code from a bundle; bundles that need "
        "code to run are imported but marked 'needs --trust'.",
    )
    models.add_argument(
        "--home",
        type=Path,
        default=None,
        metavar="DIR",
        help="MedSegNAS home folder (default: $MEDSEGNAS_HOME or ~/.medsegnas)",
    )
    actions = models.add_subparsers(dest="models_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="table of the imported models")
    listing.add_argument("--json", action="store_true", help="print the records as JSON")
    listing.set_defaults(func=list_command)

    importing = actions.add_parser(
        "import",
        help="import a bundle folder, archive (.zip, .tar.gz) or http(s) URL",
        description="Copy, unpack or download a MONAI bundle into the registry. It is checked without "
        "running anything from it: archive paths and size, weights (weights-only loading), inference "
        "config ($ expressions, _target_ components). A bundle whose inference path needs code "
        "to run (or anything outside the allow-list) is refused, naming the item and the rule "
        "(exit 1), unless you pass --trust, or --keep-untrusted to keep it marked 'needs --trust' "
        "(it runs nothing until 'medsegnas models trust ID').",
    )
    importing.add_argument("source", metavar="SRC", help="bundle folder, archive file or http(s) URL")
    importing.add_argument("--name", metavar="ID", help="registry id (default: the bundle's name)")
    importing.add_argument(
        "--trust",
        action="store_true",
        help="allow this bundle to run code from its config and weights (only for sources you trust)",
    )
    checks = importing.add_mutually_exclusive_group()
    checks.add_argument(
        "--sha256",
        metavar="HEX",
        help="expected sha256 of the archive or download (of a folder: its content digest, see models info)",
    )
    checks.add_argument(
        "--checksum",
        metavar="ALGO:HEX",
        help="expected checksum with its algorithm (md5, sha1, sha256, sha512), e.g. sha1:9f3c...",
    )
    importing.add_argument("--force", action="store_true", help="replace a model with the same id")
    untrusted = importing.add_mutually_exclusive_group()
    untrusted.add_argument(
        "--keep-untrusted",
        dest="strict",
        action="store_false",
        help="import a bundle that needs code to run anyway, marked 'needs --trust' (it runs nothing)",
    )
    untrusted.add_argument(
        "--strict", dest="strict", action="store_true", help="refuse a bundle that needs code (the default)"
    )
    importing.set_defaults(strict=True)
    importing.add_argument(
        "--rename", action="store_true", help="on an id clash import under a new id (ID-2, ID-3...)"
    )
    add_job_arguments(importing)
    importing.set_defaults(func=import_command)

    download = actions.add_parser(
        "download",
        help="download a bundle of the catalog (checksum verified) and import it",
        description="Download a MONAI model-zoo bundle listed in the catalog ('medsegnas models "
        "catalog'), verify its published checksum and import it. An interrupted download resumes "
        "when the command is run again.",
    )
    download.add_argument("catalog_name", metavar="NAME", help="catalog name, e.g. spleen_ct_segmentation")
    download.add_argument("--name", metavar="ID", help="registry id (default: NAME)")
    download.add_argument("--trust", action="store_true", help="allow the bundle to run code (see import)")
    download.add_argument("--force", action="store_true", help="replace a model with the same id")
    download.add_argument("--strict", action="store_true", help="refuse a bundle that needs code to run")
    download.add_argument("--catalog", type=Path, metavar="FILE", help="catalog file (default: shipped)")
    add_job_arguments(download)
    download.set_defaults(func=download_command)

    catalog = actions.add_parser("catalog", help="list the downloadable bundles")
    catalog.add_argument("--catalog", type=Path, metavar="FILE", help="catalog file (default: shipped)")
    catalog.add_argument("--json", action="store_true", help="print the entries as JSON")
    catalog.set_defaults(func=catalog_command)

    info = actions.add_parser("info", help="metadata, labels, trust state and safety problems of one model")
    info.add_argument("model_id", metavar="ID")
    info.add_argument("--json", action="store_true", help="print the record (with current problems) as JSON")
    info.set_defaults(func=info_command)

    trust = actions.add_parser(
        "trust",
        help="allow an imported model to run code from its bundle (or --revoke)",
        description="Mark a model trusted: its inference config may then run Python expressions and "
        "bundle code, and its weights load with the full unpickler. Only for sources you trust.",
    )
    trust.add_argument("model_id", metavar="ID")
    trust.add_argument("--revoke", action="store_true", help="mark it untrusted again")
    trust.set_defaults(func=trust_command)

    remove = actions.add_parser("remove", help="delete a model from the registry")
    remove.add_argument("model_id", metavar="ID")
    remove.set_defaults(func=remove_command)


# ------------------------------------------------------------------------------ output


def _progress_printer(stream: TextIO | None = None) -> ProgressCallback:
    """Download progress on ``stream`` (default: stderr): a rewritten line on a terminal, every 10 % otherwise."""
    stream = stream if stream is not None else sys.stderr
    interactive = stream.isatty()
    state = {"last_print": 0.0, "last_decile": -1}

    def report(done: int, total: int | None) -> None:
        if interactive:
            now = time.monotonic()
            if now - state["last_print"] < 0.2 and (total is None or done < total):
                return
            state["last_print"] = now
            shown = f"{human_size(done)}" + (
                f" / {human_size(total)} ({100 * done // total}%)" if total else ""
            )
            stream.write(f"\rdownloading {shown}   ")
            if total is not None and done >= total:
                stream.write("\n")
            stream.flush()
        elif total:
            decile = 10 * done // total
            if decile != state["last_decile"]:
                state["last_decile"] = decile
                print(f"downloading: {10 * decile}% of {human_size(total)}", file=stream, flush=True)

    return report


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _describe_import(record: ModelRecord, path: Path) -> None:
    labels = ", ".join(
        label["name"] for label in record.labels if label["value"] != 0 or len(record.labels) < 2
    )
    print(
        f"imported '{record.id}' ({record.name} {record.version}) into {path}: "
        f"{record.modality or 'unknown modality'}, {record.input_channels or '?'} input channel(s), "
        f"labels: {labels or 'none declared'}"
    )
    if record.verified:
        print(f"checksum verified: {record.verified}")
    if record.trusted:
        print("trusted: it may run code from its bundle")
    elif record.problems:
        print(
            f"warning: '{record.id}' needs code to run and will be refused until you trust it "
            f"({TRUST_COMMAND.format(id=record.id)}, only if you trust its source):",
            file=sys.stderr,
        )
        for problem in record.problems:
            print(f"  - {problem}", file=sys.stderr)
    else:
        print("safe: runs without executing any code from the bundle")
    verdict = _interactive_verdict(path)
    if verdict:
        print(verdict)
    if record.workflow_problems:
        print(
            f"note: {len(record.workflow_problems)} item(s) of its inference config that medsegnas segment "
            f"does not use need code in MONAI's own workflow (see medsegnas models info {record.id})"
        )


def _interactive_verdict(path: Path) -> str | None:
    """The one-line verdict of a bundle whose interactive use differs from its automatic one (VISTA3D)."""
    from ..errors import MedSegNASError
    from ..interactive.vista import trust_verdict

    try:
        return trust_verdict(path)
    except MedSegNASError:
        return None  # not a readable bundle: the rest of the report says what is wrong


# ---------------------------------------------------------------------------- commands


def list_command(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.home)
    records = registry.list()
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    if not records:
        print(
            f"no models in {registry.models_dir}; import one with 'medsegnas models import' or "
            "'medsegnas models download NAME' (see 'medsegnas models catalog')"
        )
        return 0
    rows = []
    for record in records:
        present = (registry.model_path(record.id) / "configs").is_dir()
        rows.append(
            [
                record.id,
                record.version or "-",
                record.modality or "-",
                str(sum(1 for label in record.labels if label["value"] != 0)),
                record.trust_state if present else "MISSING FOLDER",
                human_size(record.size_bytes),
                record.source,
            ]
        )
    _print_table(rows, ["ID", "VERSION", "MODALITY", "LABELS", "TRUST", "SIZE", "SOURCE"])
    return 0


#: Job kinds of ``models import`` and ``models download`` run with --run-dir / --detach.
IMPORT_KIND, DOWNLOAD_KIND = "model-import", "model-download"
#: Seconds between two progress events of a download job (every chunk would flood the event log).
PROGRESS_INTERVAL_S = 0.5


def _as_job(args: argparse.Namespace) -> bool:
    return args.run_dir is not None or args.detach


def _job_progress(ctx: Any, stage: str) -> ProgressCallback:
    """A registry progress callback that reports to a job (throttled) and stops it when asked."""
    last = {"time": -math.inf}

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if (total and done >= total) or now - last["time"] >= PROGRESS_INTERVAL_S:
            last["time"] = now
            ctx.progress(min(done, total or done), max(total or done, 1), stage=stage)
        ctx.raise_if_stop_requested()  # a cancel between two chunks; the partial file is kept

    return report


def _run_as_job(kind: str, args: argparse.Namespace, work, config: dict[str, Any], source: str) -> int:
    """Run ``work(progress)`` (an import into the registry) as a job whose result names the model."""

    def body(ctx) -> dict[str, Any]:
        registry = ModelRegistry(args.home)
        record = work(registry, _job_progress(ctx, "download" if kind == DOWNLOAD_KIND else "import"))
        path = registry.model_path(record.id)
        _describe_import(record, path)
        ctx.log(f"imported '{record.id}' into {path}")
        return {
            "model": record.id,
            "path": str(path),
            "trust_state": record.trust_state,
            "problems": list(record.problems),
        }

    home = str(args.home) if args.home else None
    return run_job_command(kind, args, body, {**config, "home": home}, inputs={"source": source})


def import_command(args: argparse.Namespace) -> int:
    checksum = None
    if args.sha256:
        checksum = Checksum("sha256", args.sha256)
    elif args.checksum:
        checksum = Checksum.parse(args.checksum)

    def work(registry: ModelRegistry, progress: ProgressCallback) -> ModelRecord:
        return registry.import_model(
            args.source,
            model_id=args.name,
            trusted=args.trust,
            checksum=checksum,
            force=args.force,
            strict=args.strict,
            if_exists="rename" if args.rename else None,
            progress=progress,
        )

    if _as_job(args):
        config = {"source": args.source, "name": args.name, "trust": args.trust, "rename": args.rename}
        return _run_as_job(IMPORT_KIND, args, work, config, args.source)
    registry = ModelRegistry(args.home)
    record = work(registry, _progress_printer())
    _describe_import(record, registry.model_path(record.id))
    return 0


def download_command(args: argparse.Namespace) -> int:
    def work(registry: ModelRegistry, progress: ProgressCallback) -> ModelRecord:
        return registry.download(
            args.catalog_name,
            catalog=args.catalog,
            model_id=args.name,
            trusted=args.trust,
            force=args.force,
            strict=args.strict,
            progress=progress,
        )

    if _as_job(args):
        config = {"catalog_name": args.catalog_name, "name": args.name, "trust": args.trust}
        config["catalog"] = str(args.catalog) if args.catalog else None
        return _run_as_job(DOWNLOAD_KIND, args, work, config, args.catalog_name)
    registry = ModelRegistry(args.home)
    record = work(registry, _progress_printer())
    _describe_import(record, registry.model_path(record.id))
    return 0


def catalog_command(args: argparse.Namespace) -> int:
    entries = load_catalog(args.catalog)
    if args.json:
        print(json.dumps({name: entry.to_dict() for name, entry in entries.items()}, indent=2))
        return 0
    rows = [
        [
            name,
            entry.version,
            entry.modality,
            str(sum(1 for label in entry.labels if label["name"].lower() != "background")),
            {"untrusted": "runs", "trust": "needs --trust", "no": "does not run"}.get(
                entry.runs, "needs --trust" if entry.needs_trust else "safe"
            ),
            entry.license if len(entry.license) <= 24 else entry.license[:21] + "...",
            entry.description if len(entry.description) <= 70 else entry.description[:67] + "...",
        ]
        for name, entry in sorted(entries.items())
    ]
    _print_table(rows, ["NAME", "VERSION", "MODALITY", "LABELS", "TRUST", "LICENSE", "DESCRIPTION"])
    for name, entry in sorted(entries.items()):
        if entry.interactive:
            print(f"{name}: {entry.interactive}")
    return 0


def info_command(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.home)
    record = registry.get(args.model_id)
    path = registry.model_path(record.id)
    present = (path / "configs").is_dir()
    problems, workflow_problems = record.problems, record.workflow_problems
    if present:
        # The allow-lists may have grown since the import: show what the current checks find,
        # plus the weights findings recorded at import (not re-read: they can be large).
        config_problems, workflow_problems = registry.check_model(record.id)
        weight_problems = [p for p in record.problems if p.startswith("weights file")]
        problems = list(dict.fromkeys([*config_problems, *weight_problems]))
    if args.json:
        data: dict[str, Any] = record.to_dict()
        data.update(
            path=str(path),
            present=present,
            trust_state=record.trust_state,
            current_problems=problems,
            current_workflow_problems=workflow_problems,
        )
        print(json.dumps(data, indent=2))
        return 0
    state = "trusted" if record.trusted else ("needs --trust" if problems else "safe")
    lines = [
        f"id:          {record.id}",
        f"name:        {record.name}",
        f"version:     {record.version or '-'}",
        f"task:        {record.task or '-'}",
        f"description: {record.description or '-'}",
        f"network:     {record.network or '-'}",
        f"modality:    {record.modality or '-'}, {record.input_channels or '?'} input channel(s), "
        f"{record.output_channels or '?'} output channel(s)",
        f"folder:      {path}" + ("" if present else "  (MISSING: remove and import again)"),
        f"size:        {human_size(record.size_bytes)}",
        f"source:      {record.source}",
        f"sha256:      {record.sha256} (of the {record.sha256_of})",
        f"verified:    {record.verified or 'no checksum given'}",
        f"imported:    {record.imported}",
        f"trust:       {state}",
    ]
    verdict = _interactive_verdict(path) if present else None
    if verdict:
        lines.append(f"verdict:     {verdict}")
    lines += [
        "labels:",
    ]
    lines += [
        f"  {label['value']:>3}  {label['name']:<32} rgb {' '.join(f'{c:.3f}' for c in label['color'])}"
        for label in record.labels
    ] or ["  (none declared)"]
    if problems:
        lines.append("needs code to run:" if not record.trusted else "needs code to run (allowed: trusted):")
        lines += [f"  - {problem}" for problem in problems]
        if not record.trusted:
            lines.append(f"to allow it (only if you trust its source): {TRUST_COMMAND.format(id=record.id)}")
    if workflow_problems:
        lines.append("not used by medsegnas segment, but MONAI's own workflow would need --trust for:")
        lines += [f"  - {problem}" for problem in workflow_problems]
    print("\n".join(lines))
    return 0


def trust_command(args: argparse.Namespace) -> int:
    record = ModelRegistry(args.home).set_trusted(args.model_id, not args.revoke)
    print(f"'{record.id}' is now {'trusted' if record.trusted else 'untrusted'} ({record.trust_state})")
    return 0


def remove_command(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.home)
    record = registry.remove(args.model_id)
    print(f"removed '{record.id}' ({human_size(record.size_bytes)}) from {registry.models_dir}")
    return 0
