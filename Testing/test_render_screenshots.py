"""Offscreen pictures drawn by Slicer's own slice and 3D views (slicer-core MRML classes + VTK offscreen).

What a user looking at the README pictures would check: the slice view has the asked size, shows
the CT in grey where there is no segment, and each organ in its own color (blended over the CT,
with a full-color outline) exactly where its label is in that slice, with the patient's right on
the left of the axial view; the 3D view shows the organ surfaces; the screenshot script writes the
README pictures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

slicer = pytest.importorskip("slicer", reason="rendering needs slicer-core (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import slicer_views as rendering  # noqa: E402
from MedSegNASLib.data.phantom import PHANTOM_LABELS, generate_phantom_case  # noqa: E402
from MedSegNASLib.errors import MedSegNASError  # noqa: E402
from MedSegNASLib.panels import slicer_bridge as bridge  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHANTOM_SEED = 2  # its most crowded axial plane crosses all four organs
PHANTOM_SIZE = 40
WIDTH, HEIGHT = 240, 200  # not square: a swapped width/height would show
COLORS = {label.value: np.array(label.color) * 255.0 for label in PHANTOM_LABELS if label.value > 0}
NAMES = {label.value: label.name for label in PHANTOM_LABELS}


@pytest.fixture(scope="module")
def offscreen() -> None:
    problem = rendering.offscreen_rendering_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom_case(PHANTOM_SEED, PHANTOM_SIZE)


@pytest.fixture()
def scene_views(offscreen, phantom):
    """Views on a scene holding the phantom CT (abdomen window) and its segmentation."""
    image, label = phantom
    views = rendering.SceneViews(size=(WIDTH, HEIGHT))
    volume_node = bridge.volume_to_volume_node(image, views.scene, "phantom")
    rendering.set_window_level(volume_node, *rendering.CT_ABDOMEN_WINDOW_LEVEL)
    segmentation_node = bridge.labelmap_to_segmentation_node(
        label, PHANTOM_LABELS, views.scene, reference_volume_node=volume_node
    )
    yield views, volume_node, segmentation_node
    views.close()


def _labels_under_pixels(view: rendering.SliceView, label) -> np.ndarray:
    """(H, W) label value under each pixel's centre: nearest voxel, computed here from the affine."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    ras = view.pixel_to_ras(rows, columns)
    ijk = np.rint((ras - label.affine[:3, 3]) @ np.linalg.inv(label.affine[:3, :3]).T).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(label.array.shape[1:])), axis=-1)
    values = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    values[inside] = label.array[0][tuple(ijk[inside].T)]
    return values


def test_axial_view_shows_grey_ct_and_each_segment_in_its_color_where_its_label_is(scene_views, phantom):
    views, volume_node, segmentation_node = scene_views
    _, label = phantom
    view = views.slice_view("Axial")
    assert view.orientation == "Axial"
    view.show(volume_node)
    view.jump_to(rendering.segment_rich_position(label))
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility(False)
    ct_only = view.render().astype(float)
    display.SetVisibility(True)
    picture = view.render()

    assert picture.shape == (HEIGHT, WIDTH, 3) and picture.dtype == np.uint8
    # The CT is grey and has contrast (air, fat, organs, bone in the abdomen window).
    assert np.array_equal(ct_only[..., 0], ct_only[..., 1]) and np.array_equal(
        ct_only[..., 0], ct_only[..., 2]
    )
    assert ct_only.std() > 20

    expected = _labels_under_pixels(view, label)
    margin = np.ones((7, 7), dtype=bool)  # stay 3 pixels off label borders (outlines, resampling)
    no_segment = ndimage.binary_erosion(expected == 0, margin)
    assert no_segment.mean() > 0.5
    shown = picture.astype(float)
    assert np.abs(shown[no_segment] - ct_only[no_segment]).max() <= 1, "the overlay leaks off the segments"

    opacity = display.GetOpacity() * display.GetOpacity2DFill()
    assert 0.2 < opacity < 0.8, "segments are drawn semi-transparent by default"
    # Undo the blend: the color the overlay put on each pixel.
    overlay = (shown - (1.0 - opacity) * ct_only) / opacity
    present = [v for v in COLORS if (expected == v).sum() > 0]
    assert present == [1, 2, 3, 4], "the chosen plane crosses all four organs"
    centroids = {}
    for value in present:
        region = expected == value
        interior = ndimage.binary_erosion(region, margin)
        assert interior.sum() >= 15, f"{NAMES[value]}: too few pixels to check"
        error = np.abs(overlay[interior] - COLORS[value]).max(axis=-1)
        assert np.median(error) < 6, f"{NAMES[value]} is not drawn in its color"
        assert (error < 12).mean() > 0.95, f"{NAMES[value]} is not drawn in its color everywhere"
        # At the organ's centroid in this slice, the picture shows that organ's color, not another's.
        row, column = (int(round(c)) for c in ndimage.center_of_mass(region))
        centroids[value] = (row, column)
        if region[row, column]:
            nearest = min(COLORS, key=lambda v: np.abs(overlay[row, column] - COLORS[v]).max())
            assert nearest == value, f"{NAMES[value]}'s centroid shows {NAMES[nearest]}'s color"
        # Outline: pixels at full segment color along the label's border.
        border = region & ~ndimage.binary_erosion(region, iterations=2)
        border_zone = ndimage.binary_dilation(border, iterations=2)
        full_color = np.abs(shown - COLORS[value]).max(axis=-1) < 4
        assert (full_color & border_zone).sum() >= 8, f"{NAMES[value]} has no outline"
        assert (full_color & no_segment).sum() == 0
    # Radiological convention: the patient's right (liver, right kidney) on the left of the image.
    assert centroids[1][1] < centroids[2][1]
    assert centroids[3][1] < centroids[4][1]
    # The mapping the test used agrees with the one the view reports for a point.
    ras = view.pixel_to_ras(np.array(centroids[2][0]), np.array(centroids[2][1]))
    assert np.allclose(view.ras_to_pixel(ras), centroids[2], atol=1e-6)


def test_three_d_view_shows_the_segment_surfaces_from_the_front(scene_views):
    views, _, segmentation_node = scene_views
    view = views.three_d_view()
    view.show(segmentation_node)
    segmentation_node.GetDisplayNode().SetVisibility3D(False)
    empty = view.render().astype(int)
    segmentation_node.GetDisplayNode().SetVisibility3D(True)
    picture = view.render().astype(int)
    assert picture.shape == (HEIGHT, WIDTH, 3)
    changed = np.abs(picture - empty).max(axis=-1) > 10
    assert 0.05 < changed.mean() < 0.9, "the surfaces fill part of the view"

    surface_name = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    columns, pixels = {}, {}
    for value in COLORS:
        surface = segmentation.GetSegment(bridge.segment_id_for_label(value)).GetRepresentation(surface_name)
        assert surface is not None and surface.GetNumberOfPoints() > 0
        centre = np.mean([surface.GetBounds()[a : a + 2] for a in (0, 2, 4)], axis=1)
        view.renderer.SetWorldPoint(*centre, 1.0)
        view.renderer.WorldToDisplay()
        x, y, _ = view.renderer.GetDisplayPoint()
        row, column = HEIGHT - 1 - int(round(y)), int(round(x))
        assert changed[row, column], f"{NAMES[value]} is not drawn where its surface is"
        columns[value] = column
        pixels[value] = picture[row, column]
    # Seen from the front: the patient's right (liver) on the left, the spleen on the right.
    assert columns[1] < columns[2]
    # Lit and shaded, the organs keep their hues: the liver orange-red, the spleen purple.
    red, green, blue = pixels[1]
    assert red > 1.3 * blue and red > green
    red, green, blue = pixels[2]
    assert blue > green and red > green


def test_overview_has_slice_views_and_3d_view_under_slicer_view_colors(scene_views, tmp_path):
    views, volume_node, segmentation_node = scene_views
    picture = rendering.render_overview(views, volume_node, segmentation_node)
    gap, bar = 4, 6
    assert picture.shape == (HEIGHT + bar + 2 * gap, 4 * WIDTH + 5 * gap, 3)
    # Red (axial), Green (coronal), Yellow (sagittal), blue 3D: Slicer's layout colors from the view nodes.
    bar_colors = [tuple(int(c) for c in picture[gap, gap + i * (WIDTH + gap) + WIDTH // 2]) for i in range(4)]
    assert bar_colors == [(243, 74, 51), (110, 176, 75), (237, 213, 76), (116, 131, 233)]
    assert [text for text, _ in rendering.segment_legend(segmentation_node)] == [NAMES[v] for v in COLORS]

    path = rendering.write_png(picture, tmp_path / "overview.png")
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    from vtk.util import numpy_support

    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    back = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1]
    assert np.array_equal(back, picture), "the PNG holds the picture, top row first"
    with pytest.raises(MedSegNASError, match="does not exist"):
        rendering.write_png(picture, tmp_path / "missing" / "overview.png")


def test_screenshot_script_writes_the_readme_pictures(offscreen, tmp_path):
    search_run = tmp_path / "search-run"
    (search_run / "artifacts").mkdir(parents=True)
    topology = b"\x89PNG\r\n\x1a\n" + b"topology picture bytes"
    (search_run / "artifacts" / "topology.png").write_bytes(topology)
    out = tmp_path / "Screenshots"
    out.mkdir()
    command = [sys.executable, str(ROOT / "tools" / "render_screenshots.py"), "--out-dir", str(out)]
    command += ["--run-dir", str(search_run), "--phantom-size", "32", "--view-size", "96"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "phantom" in result.stdout
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(out / "MedSegNAS-slices.png"))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (4 * 96 + 5 * 4, 96 + 6 + 2 * 4)
    assert (out / "MedSegNAS-topology.png").read_bytes() == topology
    assert sorted(p.name for p in out.iterdir()) == ["MedSegNAS-slices.png", "MedSegNAS-topology.png"]

    # Without a run folder there is no topology: said, and nothing else is touched.
    (out / "MedSegNAS-topology.png").unlink()
    command = [sys.executable, str(ROOT / "tools" / "render_screenshots.py"), "--out-dir", str(out)]
    command += ["--phantom-size", "32", "--view-size", "96"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "MedSegNAS-topology.png not written" in result.stdout
    assert not (out / "MedSegNAS-topology.png").exists()

    # A missing output folder is a one-line error, exit status 1.
    command = [
        sys.executable,
        str(ROOT / "tools" / "render_screenshots.py"),
        "--out-dir",
        str(tmp_path / "nope"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "does not exist" in result.stderr
