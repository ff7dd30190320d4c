"""Offscreen pictures of an MRML scene, drawn by 3D Slicer's own slice-view and 3D-view machinery.

This renders what a Slicer user sees, without the Slicer application or Qt: the MRML classes of the
``slicer-core`` wheel build the views, and VTK renders them into an offscreen (EGL or OSMesa)
window. Like ``MedSegNASLib.panels.slicer_bridge`` it imports ``slicer``, so it lives beside
``tools/render_screenshots.py`` rather than in the Lib (only the bridge there may import ``slicer``).

What comes from MRML, as in the application:

* the view nodes: ``vtkMRMLLayoutLogic`` makes Slicer's default layout (Red axial, Yellow sagittal,
  Green coronal slice nodes and the ``View1`` 3D view node, with their orientation presets and
  layout colors);
* slice pictures: ``vtkMRMLSliceLogic`` reslices the background volume with its display node
  (window/level, grey color table, interpolation) in the slice node's ``XYToRAS`` geometry, and
  ``vtkMRMLSegmentationsDisplayableManager2D`` draws each visible segment as a filled,
  semi-transparent region with an outline (the segmentation display node's opacities);
* 3D pictures: ``vtkMRMLSegmentationsDisplayableManager3D`` draws the segments' closed-surface
  representation, ``vtkMRMLViewDisplayableManager`` the background gradient of the view node and
  ``vtkMRMLCameraDisplayableManager`` the camera node.

Pictures are numpy arrays of shape ``(height, width, 3)`` (``uint8`` RGB, first row at the top).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from MedSegNASLib.atomic import write_atomic
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.panels.slicer_bridge import segmentation_node_to_labelmap
from vtk.util import numpy_support

__all__ = [
    "CT_ABDOMEN_WINDOW_LEVEL",
    "SceneViews",
    "SliceView",
    "ThreeDView",
    "compose_side_by_side",
    "offscreen_rendering_problem",
    "render_overview",
    "segment_legend",
    "segment_rich_position",
    "set_window_level",
    "write_png",
]

#: Slicer's "CT-Abdomen" window/level preset: (window width, level), Hounsfield units.
CT_ABDOMEN_WINDOW_LEVEL = (350.0, 40.0)

#: The slice view each orientation is shown in by Slicer's default layout.
SLICE_VIEW_OF_ORIENTATION = {"Axial": "Red", "Sagittal": "Yellow", "Coronal": "Green"}

_SLICE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D",)
_THREE_D_MANAGERS = (
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLViewDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager3D",
)


def offscreen_rendering_problem() -> str | None:
    """Why VTK cannot render offscreen here (one line), or ``None`` when it can.

    Renders one frame in an offscreen window and reads it back; a machine without EGL, OSMesa or a
    display fails here (or VTK returns an empty frame).
    """
    try:
        window = vtk.vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetSize(8, 8)
        renderer = vtk.vtkRenderer()
        renderer.SetBackground(1.0, 0.0, 0.0)
        window.AddRenderer(renderer)
        window.Render()
        grabber = vtk.vtkWindowToImageFilter()
        grabber.SetInput(window)
        grabber.Update()
        pixels = numpy_support.vtk_to_numpy(grabber.GetOutput().GetPointData().GetScalars())
        window.Finalize()
    except Exception as exc:  # VTK raises whatever its OpenGL backend raises
        return f"VTK offscreen rendering failed: {exc}"
    if pixels is None or pixels.size == 0 or int(pixels[..., 0].max()) < 200:
        return f"VTK offscreen rendering ({window.GetClassName()}) returned an empty frame"
    return None


# --------------------------------------------------------------------------- offscreen windows


class _OffscreenWindow:
    """An offscreen render window with one renderer and an interactor (displayable managers need one)."""

    def __init__(self, size: tuple[int, int]) -> None:
        width, height = (int(v) for v in size)
        if width < 16 or height < 16:
            raise MedSegNASError(f"view size {width}x{height} is too small: use at least 16x16 pixels")
        self.size = (width, height)
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(width, height)
        self.renderer = vtk.vtkRenderer()
        self.window.AddRenderer(self.renderer)
        # Never started: displayable managers only observe it (Slicer's views always have one).
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self._text_actors: list[vtk.vtkTextActor] = []

    def capture(self) -> np.ndarray:
        """Render and read back the frame: ``(height, width, 3)`` uint8 RGB, first row at the top."""
        self.window.Render()
        grabber = vtk.vtkWindowToImageFilter()
        grabber.SetInput(self.window)
        grabber.SetInputBufferTypeToRGB()
        grabber.ReadFrontBufferOff()
        grabber.Update()
        image = grabber.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])  # VTK's first row is the bottom one

    def add_text(
        self,
        lines: Sequence[tuple[str, tuple[float, float, float]]],
        *,
        corner: str = "upper left",
        font_size: int = 16,
        chips: bool = False,
    ) -> None:
        """Draw lines of text in a corner: each in its color on a dark translucent box, or as
        ``chips``: black or white text (whichever reads better) on a box of the line's color."""
        width, height = self.size
        margin = max(4, font_size // 3)
        step = int(font_size * 1.3)
        top = corner.startswith("upper")
        for index, (text, color) in enumerate(lines):
            actor = vtk.vtkTextActor()
            actor.SetInput(text)
            prop = actor.GetTextProperty()
            prop.SetFontSize(font_size)
            prop.SetBold(True)
            if chips:
                luminance = 0.2126 * color[0] + 0.7152 * color[1] + 0.0722 * color[2]
                prop.SetColor(*((0.0, 0.0, 0.0) if luminance > 0.5 else (1.0, 1.0, 1.0)))
                prop.SetBackgroundColor(*color)
                prop.SetBackgroundOpacity(1.0)
            else:
                prop.SetColor(*color)
                prop.SetBackgroundColor(0.0, 0.0, 0.0)
                prop.SetBackgroundOpacity(0.55)
            prop.SetVerticalJustificationToBottom()
            # y of the line's bottom edge, VTK display coordinates (origin at the bottom): first line on top.
            y = height - margin - (index + 1) * step if top else margin + (len(lines) - 1 - index) * step
            if corner.endswith("left"):
                prop.SetJustificationToLeft()
                actor.SetDisplayPosition(margin, int(y))
            else:
                prop.SetJustificationToRight()
                actor.SetDisplayPosition(width - margin, int(y))
            self.renderer.AddViewProp(actor)
            self._text_actors.append(actor)

    def clear_text(self) -> None:
        for actor in self._text_actors:
            self.renderer.RemoveViewProp(actor)
        self._text_actors.clear()

    def close(self) -> None:
        self.window.Finalize()


def _instantiate_managers(factory: Any, names: Sequence[str], application_logic: Any, renderer: Any) -> Any:
    factory.SetMRMLApplicationLogic(application_logic)
    for name in names:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    return factory.InstantiateDisplayableManagers(renderer)


# --------------------------------------------------------------------------- views


class SliceView:
    """One of Slicer's slice views (a slice node + slice logic + 2D displayable managers), offscreen.

    Made by :meth:`SceneViews.slice_view`. :meth:`show` puts a volume in the background layer and
    fits the field of view to it, :meth:`jump_to` moves the slice plane through a point,
    :meth:`render` returns the picture and :meth:`ras_to_pixel` says where a point lands on it.
    """

    def __init__(self, views: SceneViews, layout_name: str) -> None:
        self._views = views
        self.slice_node = views.scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")
        if self.slice_node is None:
            raise MedSegNASError(f"the scene has no slice view named {layout_name!r} (Red, Yellow or Green)")
        self.slice_logic = slicer.vtkMRMLSliceLogic()
        self.slice_logic.SetMRMLApplicationLogic(views.application_logic)
        self.slice_logic.SetMRMLScene(views.scene)
        self.slice_logic.SetSliceNode(self.slice_node)
        views.slice_logics.AddItem(self.slice_logic)
        self._window = _OffscreenWindow(views.size)
        self.slice_logic.ResizeSliceNode(*self._window.size)
        # The blended layers (background, foreground, label map), as qMRMLSliceView shows them; the
        # slice logic has no output before a layer has a volume, so the input is set in render().
        self._layers_mapper = vtk.vtkImageMapper()
        self._layers_mapper.SetColorWindow(255.0)
        self._layers_mapper.SetColorLevel(127.5)
        self._layers_actor = vtk.vtkActor2D()
        self._layers_actor.SetMapper(self._layers_mapper)
        self._layers_actor.VisibilityOff()
        self._window.renderer.AddViewProp(self._layers_actor)
        self._managers = _instantiate_managers(
            slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(),
            _SLICE_MANAGERS,
            views.application_logic,
            self._window.renderer,
        )
        self._managers.SetMRMLDisplayableNode(self.slice_node)

    @property
    def orientation(self) -> str:
        """``Axial``, ``Sagittal``, ``Coronal`` (or ``Reformat``)."""
        return self.slice_node.GetOrientation()

    @property
    def layout_color(self) -> tuple[float, float, float]:
        """The view's color in Slicer (its controller bar), RGB 0..1."""
        return tuple(float(c) for c in self.slice_node.GetLayoutColor())

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self._window.size

    def show(self, volume_node: Any, *, fit: bool = True) -> None:
        """Show ``volume_node`` in the background layer (segmentations show in every view anyway)."""
        composite = self.slice_logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(volume_node.GetID())
        if fit:
            self.slice_logic.FitSliceToBackground(*self._window.size)

    def jump_to(self, ras: Sequence[float]) -> None:
        """Move the slice plane along its normal so it passes through ``ras`` (mm), like Slicer's jump."""
        self.slice_node.JumpSliceByOffsetting(*(float(v) for v in ras))

    @property
    def offset(self) -> float:
        """Position of the slice plane along its normal (mm), as Slicer's slice slider shows it."""
        return float(self.slice_logic.GetSliceOffset())

    def plane_label(self) -> str:
        """Where the plane is, the clinical way: ``I 332.5 mm``, ``R 47.5 mm``, ``P 38.6 mm``.

        The coordinate along the RAS axis closest to the slice normal, with the direction letter
        (R/L, A/P, S/I) instead of a sign.
        """
        matrix = self.slice_node.GetSliceToRAS()
        normal = [matrix.GetElement(r, 2) for r in range(3)]
        axis = int(np.argmax(np.abs(normal)))
        coordinate = matrix.GetElement(axis, 3)
        letter = ("RL", "AP", "SI")[axis][0 if coordinate >= 0 else 1]
        return f"{letter} {abs(coordinate):.1f} mm"

    def xy_to_ras(self) -> np.ndarray:
        """(4, 4) matrix from view pixels (x right, y up, origin at the lower-left pixel) to RAS mm."""
        matrix = self.slice_node.GetXYToRAS()
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def ras_to_pixel(self, ras: Sequence[float]) -> tuple[float, float]:
        """(row, column) of the picture from :meth:`render` where the point ``ras`` (mm) is drawn.

        The point is projected onto the slice plane first.
        """
        x, y, _, _ = np.linalg.solve(self.xy_to_ras(), np.array([*(float(v) for v in ras), 1.0]))
        return (self._window.size[1] - 1 - y, x)

    def pixel_to_ras(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """RAS mm (..., 3) of picture pixels given by row and column arrays of the same shape."""
        rows, columns = np.broadcast_arrays(np.asarray(rows, float), np.asarray(columns, float))
        xy = np.stack([columns, self._window.size[1] - 1 - rows, np.zeros_like(rows), np.ones_like(rows)], -1)
        return (xy @ self.xy_to_ras().T)[..., :3]

    def annotate(
        self,
        lines: Sequence[tuple[str, tuple[float, float, float]]],
        corner: str = "upper left",
        *,
        chips: bool = False,
    ) -> None:
        """Draw text lines ``(text, rgb)`` in a corner (``upper left``, ``lower right``...) of the view.

        ``chips``: each line on a box of its color (a legend), else in its color on a dark box.
        """
        self._window.add_text(
            lines, corner=corner, font_size=max(11, self._window.size[1] // 26), chips=chips
        )

    def clear_annotations(self) -> None:
        self._window.clear_text()

    def render(self) -> np.ndarray:
        """The view as Slicer draws it: ``(height, width, 3)`` uint8 RGB."""
        self.slice_logic.UpdatePipeline()
        layers = self.slice_logic.GetImageDataConnection() if self.slice_logic.HasInputs() else None
        if layers is not None:
            self._layers_mapper.SetInputConnection(layers)
        self._layers_actor.SetVisibility(layers is not None)
        return self._window.capture()

    def close(self) -> None:
        self._managers.SetMRMLDisplayableNode(None)
        self._window.close()


class ThreeDView:
    """Slicer's 3D view (``View1``: view node, camera node, 3D displayable managers), offscreen."""

    def __init__(self, views: SceneViews, layout_name: str = "1") -> None:
        self._views = views
        self.view_node = views.scene.GetSingletonNode(layout_name, "vtkMRMLViewNode")
        if self.view_node is None:
            raise MedSegNASError(f"the scene has no 3D view named {layout_name!r}")
        self._window = _OffscreenWindow(views.size)
        self._managers = _instantiate_managers(
            slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance(),
            _THREE_D_MANAGERS,
            views.application_logic,
            self._window.renderer,
        )
        self._managers.SetMRMLDisplayableNode(self.view_node)

    @property
    def layout_color(self) -> tuple[float, float, float]:
        return tuple(float(c) for c in self.view_node.GetLayoutColor())

    @property
    def size(self) -> tuple[int, int]:
        return self._window.size

    @property
    def renderer(self) -> vtk.vtkRenderer:
        return self._window.renderer

    def show(self, segmentation_node: Any, *, show_box: bool = False) -> None:
        """Show the segments as surfaces, seen from the front (patient's right on the left), zoomed to them.

        Makes the closed-surface representation (Slicer's "Show 3D"); ``show_box`` keeps the view's
        bounding box and R/A/S axis labels.
        """
        segmentation_node.CreateClosedSurfaceRepresentation()
        segmentation_node.GetDisplayNode().SetVisibility3D(True)
        self.view_node.SetBoxVisible(show_box)
        self.view_node.SetAxisLabelsVisible(show_box)
        bounds = _surface_bounds(segmentation_node)
        camera = self._window.renderer.GetActiveCamera()
        centre = [(bounds[2 * a] + bounds[2 * a + 1]) / 2.0 for a in range(3)]
        # Slicer's default camera: from anterior, superior up.
        camera.SetFocalPoint(*centre)
        camera.SetPosition(centre[0], centre[1] + 500.0, centre[2])
        camera.SetViewUp(0.0, 0.0, 1.0)
        self._window.renderer.ResetCamera(bounds)
        camera.Zoom(1.25)
        self._window.renderer.ResetCameraClippingRange()

    def annotate(
        self,
        lines: Sequence[tuple[str, tuple[float, float, float]]],
        corner: str = "upper left",
        *,
        chips: bool = False,
    ) -> None:
        """Draw text lines ``(text, rgb)`` in a corner of the view (see :meth:`SliceView.annotate`)."""
        self._window.add_text(
            lines, corner=corner, font_size=max(11, self._window.size[1] // 26), chips=chips
        )

    def clear_annotations(self) -> None:
        self._window.clear_text()

    def render(self) -> np.ndarray:
        """The view as Slicer draws it: ``(height, width, 3)`` uint8 RGB."""
        return self._window.capture()

    def close(self) -> None:
        self._managers.SetMRMLDisplayableNode(None)
        self._window.close()


def _surface_bounds(segmentation_node: Any) -> list[float]:
    """RAS bounds (xmin, xmax, ymin, ymax, zmin, zmax) of the visible segments' surfaces."""
    segmentation = segmentation_node.GetSegmentation()
    display = segmentation_node.GetDisplayNode()
    name = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    box = vtk.vtkBoundingBox()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        if display is not None and not display.GetSegmentVisibility(segment_id):
            continue
        surface = segmentation.GetSegment(segment_id).GetRepresentation(name)
        if surface is not None and surface.GetNumberOfPoints() > 0:
            box.AddBounds(surface.GetBounds())
    if not box.IsValid():
        raise MedSegNASError(
            f"segmentation '{segmentation_node.GetName()}' has no visible, non-empty segment"
        )
    bounds = [0.0] * 6
    box.GetBounds(bounds)
    return bounds


class SceneViews:
    """Slicer's default views on a scene, rendered offscreen.

    Sets up what the application sets up around a scene (application logic, default color tables,
    the layout's view nodes), then hands out :class:`SliceView` and :class:`ThreeDView` objects.
    Use it as a context manager, or call :meth:`close`, to release the offscreen windows.

    Args:
        scene: an MRML scene (a new one when ``None``).
        size: (width, height) of each view, pixels.
    """

    def __init__(self, scene: Any | None = None, *, size: tuple[int, int] = (400, 400)) -> None:
        problem = offscreen_rendering_problem()
        if problem is not None:
            raise MedSegNASError(f"cannot render pictures: {problem}")
        self.scene = scene if scene is not None else slicer.vtkMRMLScene()
        self.size = (int(size[0]), int(size[1]))
        self.application_logic = slicer.vtkMRMLApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        self.slice_logics = vtk.vtkCollection()
        self.application_logic.SetSliceLogics(self.slice_logics)
        if self.scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is None:
            # The application's color logic adds the default tables; volumes display through "Grey".
            self._color_logic = slicer.vtkMRMLColorLogic()
            self._color_logic.SetMRMLScene(self.scene)
        self._layout_logic = slicer.vtkMRMLLayoutLogic()
        self._layout_logic.SetMRMLApplicationLogic(self.application_logic)
        self._layout_logic.SetMRMLScene(self.scene)
        self._views: dict[str, SliceView | ThreeDView] = {}

    def slice_view(self, orientation_or_name: str = "Axial") -> SliceView:
        """The slice view of an orientation (``Axial``/``Sagittal``/``Coronal``) or layout name (``Red``...).

        Made on first use; later calls return the same view.
        """
        name = SLICE_VIEW_OF_ORIENTATION.get(orientation_or_name.capitalize(), orientation_or_name)
        if name not in self._views:
            self._views[name] = SliceView(self, name)
        return self._views[name]

    def three_d_view(self) -> ThreeDView:
        """The 3D view ``View1`` (made on first use)."""
        if "1" not in self._views:
            self._views["1"] = ThreeDView(self)
        return self._views["1"]

    def close(self) -> None:
        """Release the offscreen windows (the scene and its nodes stay)."""
        for view in self._views.values():
            view.close()
        self._views.clear()

    def __enter__(self) -> SceneViews:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- display settings


def set_window_level(volume_node: Any, window: float, level: float) -> None:
    """Fixed window/level (display units, e.g. HU) on a scalar volume's display node (no auto W/L)."""
    if window <= 0:
        raise MedSegNASError(f"window width must be > 0, got {window}")
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(float(window), float(level))


def segment_rich_position(label_map: Any) -> np.ndarray:
    """A RAS point (mm) whose axial, coronal and sagittal planes cut the most segments.

    For each RAS axis independently, the plane (one voxel thick) that crosses the most distinct
    labels is chosen, ties going to the one with the most labelled voxels.

    Args:
        label_map: :class:`~MedSegNASLib.data.volume.Volume` with a ``(1, I, J, K)`` integer array
            (e.g. :func:`~MedSegNASLib.panels.slicer_bridge.segmentation_node_to_labelmap`).

    Returns:
        ``(3,)`` RAS coordinates.
    """
    labels = np.asarray(label_map.array[0])
    ijk = np.argwhere(labels > 0)
    if ijk.size == 0:
        raise MedSegNASError("the segmentation is empty: there is no segment to show")
    values = labels[tuple(ijk.T)]
    ras = ijk @ label_map.affine[:3, :3].T + label_map.affine[:3, 3]
    thickness = float(np.min(np.linalg.norm(label_map.affine[:3, :3], axis=0)))
    point = np.empty(3)
    for axis in range(3):
        bins = np.floor((ras[:, axis] - ras[:, axis].min()) / thickness).astype(np.int64)
        best_key, best_bin = (-1, -1), 0
        for plane in np.unique(bins):
            in_plane = bins == plane
            key = (len(np.unique(values[in_plane])), int(in_plane.sum()))
            if key > best_key:
                best_key, best_bin = key, plane
        point[axis] = float(np.median(ras[bins == best_bin, axis]))
    return point


def segment_legend(segmentation_node: Any) -> list[tuple[str, tuple[float, float, float]]]:
    """(name, RGB 0..1) of each segment shown in the views, in segment order."""
    segmentation = segmentation_node.GetSegmentation()
    display = segmentation_node.GetDisplayNode()
    legend = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        if display is None or display.GetSegmentVisibility(segment_id):
            segment = segmentation.GetSegment(segment_id)
            legend.append((segment.GetName(), tuple(float(c) for c in segment.GetColor())))
    return legend


def render_overview(
    views: SceneViews,
    volume_node: Any,
    segmentation_node: Any,
    *,
    position: Sequence[float] | None = None,
    orientations: Sequence[str] = ("Axial", "Coronal", "Sagittal"),
    three_d: bool = True,
    labels: bool = True,
) -> np.ndarray:
    """Slice views through one point plus the 3D view of a segmented volume, side by side.

    Args:
        views: the offscreen views of the scene holding both nodes.
        volume_node: the background volume (shown with its display node's window/level).
        segmentation_node: its segmentation (2D: fill + outline; 3D: closed surfaces).
        position: RAS point (mm) all slice planes pass through; default
            :func:`segment_rich_position` of the segmentation.
        orientations: slice views from left to right.
        three_d: add the 3D view on the right.
        labels: write each view's orientation and slice position, the volume name (as Slicer's
            corner annotation ``B: name``) and a legend of the segments in the 3D view.

    Returns:
        ``(H, W, 3)`` uint8 picture, each view under a bar of its Slicer layout color.
    """
    if position is None:
        position = segment_rich_position(segmentation_node_to_labelmap(segmentation_node, volume_node))
    panels, colors = [], []
    for orientation in orientations:
        view = views.slice_view(orientation)
        view.show(volume_node)
        view.jump_to(position)
        view.clear_annotations()
        if labels:
            view.annotate([(f"{view.orientation}  {view.plane_label()}", (1.0, 1.0, 1.0))])
            view.annotate([(f"B: {volume_node.GetName()}", (1.0, 1.0, 1.0))], corner="lower left")
        panels.append(view.render())
        colors.append(view.layout_color)
    if three_d:
        view = views.three_d_view()
        view.show(segmentation_node)
        view.clear_annotations()
        if labels:
            view.annotate([("3D", (1.0, 1.0, 1.0))])
            view.annotate(segment_legend(segmentation_node), corner="lower left", chips=True)
        panels.append(view.render())
        colors.append(view.layout_color)
    return compose_side_by_side(panels, colors)


# --------------------------------------------------------------------------- pictures


def compose_side_by_side(
    panels: Sequence[np.ndarray],
    bar_colors: Sequence[tuple[float, float, float]] | None = None,
    *,
    gap: int = 4,
    bar: int = 6,
    background: tuple[int, int, int] = (40, 40, 40),
) -> np.ndarray:
    """Pictures in a row, each under a bar of its view's color (as Slicer's view controllers), on a frame.

    Args:
        panels: ``(H_n, W_n, 3)`` uint8 pictures; shorter ones are centred vertically.
        bar_colors: one RGB 0..1 color per panel (``None``: no bars).
        gap: pixels between and around panels.
        bar: height of the color bars, pixels.

    Returns:
        ``(H, W, 3)`` uint8 picture.
    """
    if not panels:
        raise MedSegNASError("no picture to compose")
    bar = bar if bar_colors is not None else 0
    height = max(p.shape[0] for p in panels) + bar + 2 * gap
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) + 1)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = background
    left = gap
    for index, panel in enumerate(panels):
        top = gap + (height - 2 * gap - bar - panel.shape[0]) // 2
        if bar_colors is not None:
            color = np.round(np.asarray(bar_colors[index], float) * 255).astype(np.uint8)
            canvas[top : top + bar, left : left + panel.shape[1]] = color
        canvas[top + bar : top + bar + panel.shape[0], left : left + panel.shape[1]] = panel[..., :3]
        left += panel.shape[1] + gap
    return canvas


def write_png(picture: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an ``(H, W, 3)`` uint8 picture (first row at the top) to a PNG file, atomically."""
    picture = np.ascontiguousarray(picture)
    if picture.ndim != 3 or picture.shape[2] not in (3, 4) or picture.dtype != np.uint8:
        raise MedSegNASError(f"a picture is (H, W, 3 or 4) uint8, got {picture.shape} {picture.dtype}")
    height, width, channels = picture.shape
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    scalars = numpy_support.numpy_to_vtk(picture[::-1].reshape(-1, channels), deep=True)
    image.GetPointData().SetScalars(scalars)
    writer = vtk.vtkPNGWriter()
    writer.SetInputData(image)
    writer.WriteToMemoryOn()
    writer.Write()
    data = numpy_support.vtk_to_numpy(writer.GetResult()).tobytes()
    path = Path(path)
    if not path.parent.is_dir():
        raise MedSegNASError(f"cannot write {path}: folder {path.parent} does not exist")
    return write_atomic(path, lambda handle: handle.write(data))
