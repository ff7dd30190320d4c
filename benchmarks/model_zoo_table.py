"""The README's model-zoo table: does ``medsegnas segment`` run each catalog bundle from its
published config, and does it give MONAI's own label map?

For every bundle of ``Testing/data/model_zoo`` (published configs, no weights):

1. :func:`MedSegNASLib.inference.model.run_status`: runs untrusted / needs ``--trust`` / not at
   all, and why (``--update-catalog`` writes it into ``models/catalog.json`` as ``runs`` and
   ``runs_reason``; the tests check that the catalog says what this check finds);
2. unless ``--status-only``: random weights (seeded), an oblique test image about the bundle's
   voxel size, ``python -m monai.bundle run`` against ``medsegnas segment --device cpu``
   (``--trust`` where the bundle needs it), and the share of voxels with the same label
   (``Testing/zoo_fixtures.py``).

Usage::

    python benchmarks/model_zoo_table.py [--only NAME ...] [--update-catalog] [--status-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "MedSegNAS"), str(ROOT / "Testing")]
CATALOG = ROOT / "MedSegNAS" / "MedSegNASLib" / "models" / "catalog.json"
SHOWN = {"untrusted": "runs untrusted", "trust": "needs --trust", "no": "does not run"}


def statuses() -> dict[str, tuple[str, str]]:
    from MedSegNASLib.inference.model import run_status
    from zoo_fixtures import ZOO

    return {folder.name: run_status(folder) for folder in sorted(ZOO.iterdir()) if folder.is_dir()}


def update_catalog(found: dict[str, tuple[str, str]]) -> list[str]:
    """Write ``runs``/``runs_reason`` and ``needs_trust``/``trust_problems`` of each catalog bundle
    that has published configs here."""
    from MedSegNASLib.models.bundle import inference_path_problems, load_config_file
    from MedSegNASLib.models.registry import SEGMENT_CONFIG_IDS
    from zoo_fixtures import ZOO

    catalog = json.loads(CATALOG.read_text())
    changed = []
    for name, entry in catalog["models"].items():
        if name in found:
            status, reason = found[name]
            if (entry.get("runs"), entry.get("runs_reason")) != (status, reason):
                changed.append(name)
            entry["runs"], entry["runs_reason"] = status, reason
            # The label the registry shows ("safe" / "needs --trust") from the same published config.
            root = ZOO / name
            problems = inference_path_problems(root, load_config_file(next((root / "configs").glob("inference.*"))), SEGMENT_CONFIG_IDS)  # fmt: skip
            if (entry.get("needs_trust"), entry.get("trust_problems")) != (bool(problems), problems):
                changed.append(name)
            entry["needs_trust"], entry["trust_problems"] = bool(problems), problems
    catalog["runs_note"] = (
        "runs: 'untrusted' (medsegnas segment runs it as published), 'trust' (only with --trust; "
        "runs_reason: the first check that refuses it) or 'no' (runs_reason: why not); from "
        "MedSegNASLib.inference.model.run_status on the published configs in Testing/data/model_zoo "
        "(benchmarks/model_zoo_table.py --update-catalog)"
    )
    CATALOG.write_text(json.dumps(catalog, indent=2) + "\n")
    return changed


def agreement(name: str, trust: bool, seed: int = 0) -> tuple[float | None, str]:
    import zoo_fixtures as zf

    with tempfile.TemporaryDirectory(prefix=f"zoo-{name[:12]}-") as scratch:
        folder = Path(scratch)
        clock = time.perf_counter()
        bundle = zf.prepare_bundle(name, folder, seed=seed)
        images = zf.write_images(name, folder / "images")
        process, theirs = zf.monai_run(name, bundle, images, folder / "monai")
        monai_s = time.perf_counter() - clock
        if process.returncode != 0 or theirs is None:
            return None, "MONAI's run failed: " + process.stderr.strip().splitlines()[-1][:200]
        clock = time.perf_counter()
        code = zf.ours(name, bundle, images, folder / "ours.nii.gz", trust=trust)
        ours_s = time.perf_counter() - clock
        if code != 0:
            return None, "medsegnas segment failed"
        share = zf.agreement(zf.read(folder / "ours.nii.gz"), zf.read(theirs))
        return share, f"MONAI {monai_s:.0f} s, ours {ours_s:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="bundle names (default: all)")
    parser.add_argument(
        "--update-catalog", action="store_true", help="write the run status into catalog.json"
    )
    parser.add_argument("--status-only", action="store_true", help="no MONAI runs, only the check")
    args = parser.parse_args(argv)
    found = statuses()
    if args.update_catalog:
        print(f"catalog updated ({', '.join(update_catalog(found)) or 'no changes'})", file=sys.stderr)
    import zoo_fixtures as zf

    rows = [
        "| bundle | medsegnas segment | agreement with MONAI's run (CPU) | why |",
        "| --- | --- | --- | --- |",
    ]
    for name, (status, reason) in found.items():
        if args.only and name not in args.only:
            continue
        share, note = (None, "")
        if not args.status_only and status != "no" and name in zf.CASES:
            try:
                share, note = agreement(name, trust=status == "trust")
            except Exception as exc:  # one bundle's failure must not lose the others' rows
                share, note = None, f"{type(exc).__name__}: {exc}"[:200]
            print(f"{name}: {share} ({note})", file=sys.stderr, flush=True)
        shown = "-" if share is None else f"{share:.6f}"
        rows.append(f"| {name} | {SHOWN[status]} | {shown} | {reason or ''} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
