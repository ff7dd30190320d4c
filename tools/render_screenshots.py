#!/usr/bin/env python3
"""Render the README / Extensions Index screenshots with Slicer's own views, offscreen.

Writes, into ``--out-dir`` (default ``Resources/Screenshots``):

* ``MedSegNAS-slices.png``: axial, coronal and sagittal slice views of a CT-like volume with its
  segmentation (filled, semi-transparent, outlined, as Slicer draws it) and the 3D view of the
  segments' surfaces, side by side. Drawn by the MRML slice logic and displayable managers of the
  ``slicer-core`` wheel (see ``tools/slicer_views.py``), without the Slicer application or Qt.
* ``MedSegNAS-topology.png``: the searched network's topology picture of a ``medsegnas search`` run
  (``artifacts/topology.png``), when a run is given.

What is shown, first match wins:

1. ``--image IMAGE --segmentation LABELS``: any image and label map / ``.seg.nrrd`` file;
2. ``--run-dir DIR``: the output folder of ``medsegnas demo`` (its segmented test image, and the
   topology of its search run), or a search run folder (topology only; the image then comes from
   the next options);
3. ``--dataset DIR``: the first labelled case of a dataset (``dataset.json`` folder);
4. otherwise a phantom case made on the fly (``--phantom-size``, ``--phantom-seed``).

Examples::

    python tools/render_screenshots.py --run-dir /tmp/demo            # after `medsegnas demo --out /tmp/demo`
    python tools/render_screenshots.py --phantom-size 96 --out-dir /tmp/pictures

Needs offscreen OpenGL (EGL or OSMesa, which VTK's wheels use without a display).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedSegNAS"))  # run from a checkout without `pip install -e .` too

from MedSegNASLib.atomic import write_atomic  # noqa: E402
from MedSegNASLib.data.volume import LabelInfo, Volume  # noqa: E402
from MedSegNASLib.errors import MedSegNASError  # noqa: E402

SLICES_PICTURE = "MedSegNAS-slices.png"
TOPOLOGY_PICTURE = "MedSegNAS-topology.png"


@dataclass
class Case:
    """What to show: an image, its label map (file or Volume) and the label table (None: the file's)."""

    name: str
    image: Path | Volume
    segmentation: Path | Volume
    labels: list[LabelInfo] | None
    source: str


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def find_topology(run_dir: Path) -> Path | None:
    """The topology picture of a search run folder, or of the newest search run of a demo folder."""
    own = run_dir / "artifacts" / "topology.png"
    if own.is_file():
        return own
    return _newest(sorted(run_dir.glob("runs/*/artifacts/topology.png")))


def demo_case(run_dir: Path) -> Case | None:
    """The segmented test image of a ``medsegnas demo`` output folder (None if it has none)."""
    from MedSegNASLib.data.datasets import load_dataset

    segmentation = _newest(sorted((run_dir / "segmentation").glob("*.seg.nrrd")))
    dataset_json = run_dir / "dataset" / "dataset.json"
    if segmentation is None or not dataset_json.is_file():
        return None
    dataset = load_dataset(dataset_json)
    name = segmentation.name[: -len(".seg.nrrd")]
    for case in [*dataset.test, *dataset.cases, *dataset.validation]:
        if case.name == name:
            source = f"{segmentation} (image {case.images[0]})"
            return Case(name, case.images[0], segmentation, dataset.labels, source)
    raise MedSegNASError(
        f"{segmentation} segments a case named {name!r}, which {dataset_json} does not list; "
        "pass --image and --segmentation instead"
    )


def dataset_case(path: Path) -> Case:
    from MedSegNASLib.data.datasets import load_dataset

    dataset = load_dataset(path / "dataset.json" if path.is_dir() else path)
    labelled = [case for case in dataset.cases if case.label is not None]
    if not labelled:
        raise MedSegNASError(f"dataset {dataset.path} has no labelled case to show")
    case = labelled[0]
    return Case(
        case.name, case.images[0], case.label, dataset.labels, f"dataset {dataset.path}, case {case.name}"
    )


def phantom_case(size: int, seed: int) -> Case:
    from MedSegNASLib.data.phantom import PHANTOM_LABELS, generate_phantom_case

    image, label = generate_phantom_case(seed, size)
    name = f"phantom_seed{seed}"
    return Case(
        name, image, label, PHANTOM_LABELS, f"phantom seed {seed}, {size}^3 voxels (ground-truth labels)"
    )


def choose_case(args: argparse.Namespace) -> Case:
    if args.image is not None:
        if args.segmentation is None:
            raise MedSegNASError("--image needs --segmentation (a label map or .seg.nrrd file)")
        return Case(args.image.name.split(".")[0], args.image, args.segmentation, None, str(args.image))
    if args.segmentation is not None:
        raise MedSegNASError("--segmentation needs --image (the segmented volume)")
    if args.run_dir is not None:
        case = demo_case(args.run_dir)
        if case is not None:
            return case
    if args.dataset is not None:
        return dataset_case(args.dataset)
    return phantom_case(args.phantom_size, args.phantom_seed)


def render_slices(case: Case, path: Path, args: argparse.Namespace) -> Path:
    """Load the case into a new MRML scene and write the slice + 3D overview picture."""
    import slicer_views as rendering  # beside this script: it imports slicer, so it stays out of the Lib
    from MedSegNASLib.data.io import read_volume
    from MedSegNASLib.panels import slicer_bridge

    image = case.image if isinstance(case.image, Volume) else read_volume(case.image)
    with rendering.SceneViews(size=(args.view_size, args.view_size)) as views:
        volume_node = slicer_bridge.volume_to_volume_node(image, views.scene, case.name)
        if args.window is not None:
            rendering.set_window_level(volume_node, args.window, args.level)
        segmentation_node = slicer_bridge.labelmap_to_segmentation_node(
            case.segmentation,
            case.labels,
            views.scene,
            reference_volume_node=volume_node,
            name=f"{case.name} segmentation",
        )
        if args.smooth:
            # Cut the smoothed 3D surfaces in the slice views instead of showing the voxels.
            segmentation_node.CreateClosedSurfaceRepresentation()
            segmentation_node.GetDisplayNode().SetPreferredDisplayRepresentationName2D("Closed surface")
        picture = rendering.render_overview(views, volume_node, segmentation_node)
    return rendering.write_png(picture, path)


def copy_topology(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    if not data.startswith(b"\x89PNG"):
        raise MedSegNASError(f"{source} is not a PNG picture")
    return write_atomic(path, lambda handle: handle.write(data))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run-dir", type=Path, help="output folder of `medsegnas demo`, or a search run folder"
    )
    parser.add_argument("--image", type=Path, help="volume to show (with --segmentation)")
    parser.add_argument("--segmentation", type=Path, help="its label map or .seg.nrrd file")
    parser.add_argument("--dataset", type=Path, help="dataset folder (or dataset.json): show its first case")
    parser.add_argument("--phantom-size", type=int, default=96, help="phantom voxels per axis (default 96)")
    parser.add_argument("--phantom-seed", type=int, default=0, help="phantom seed (default 0)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "Resources" / "Screenshots")
    parser.add_argument("--view-size", type=int, default=400, help="pixels per view side (default 400)")
    parser.add_argument(
        "--window", type=float, default=350.0, help="window width, HU (default 350: CT abdomen); 0: automatic"
    )
    parser.add_argument("--level", type=float, default=40.0, help="window level, HU (default 40)")
    parser.add_argument("--smooth", action="store_true", help="show smoothed surface contours in the slices")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.window == 0:
        args.window = None
    try:
        if not args.out_dir.is_dir():
            raise MedSegNASError(f"output folder {args.out_dir} does not exist")
        case = choose_case(args)
        print(f"showing {case.source}")
        print(f"wrote {render_slices(case, args.out_dir / SLICES_PICTURE, args)}")
        topology = find_topology(args.run_dir) if args.run_dir is not None else None
        if topology is not None:
            print(f"wrote {copy_topology(topology, args.out_dir / TOPOLOGY_PICTURE)} (from {topology})")
        else:
            where = f"{args.run_dir} has no" if args.run_dir is not None else "no --run-dir given: no"
            print(f"{where} search run topology (artifacts/topology.png); {TOPOLOGY_PICTURE} not written")
    except MedSegNASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
