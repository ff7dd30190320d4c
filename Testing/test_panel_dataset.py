"""The Search and train section's scene dataset, and segment terminology, with real MRML classes.

Two phantom volumes with their segmentations are put in a ``slicer-core`` scene, each
segmentation made with *different* label values for the same organs (as two people drawing in
Segment Editor would); :func:`export_scene_dataset` must write an MSD dataset that
``load_dataset`` reads and ``medsegnas dataset check`` accepts, with one value per organ name,
and label maps equal to the original ones once renumbered. Bad pairs are refused with a message
and leave no folder behind. Segments named after common organs get SNOMED CT terminology.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the panel logic needs slicer-core (pip install slicer-core)")

from MedSegNASLib.data import load_dataset, read_volume, validate_dataset  # noqa: E402
from MedSegNASLib.data.phantom import PHANTOM_LABELS, generate_phantom_case  # noqa: E402
from MedSegNASLib.data.volume import LabelInfo, Volume  # noqa: E402
from MedSegNASLib.errors import DatasetError  # noqa: E402
from MedSegNASLib.panels import slicer_bridge as bridge  # noqa: E402
from MedSegNASLib.panels.panel_dataset import export_scene_dataset, scene_segmentation_pairs  # noqa: E402
from MedSegNASLib.panels.panel_terminology import apply_terminology, terminology_entry  # noqa: E402

pytestmark = pytest.mark.timeout(120)
ORGANS = {label.value: label for label in PHANTOM_LABELS if label.value}
SIZE = 24


def _case(scene, seed: int, name: str, values: dict[str, int]):
    """A phantom volume node and its segmentation node whose organs carry the label ``values``
    (organ name -> value); returns the nodes and the label array renumbered that way."""
    image, label = generate_phantom_case(seed, SIZE)
    renumbered = np.zeros_like(label.array)
    for value, organ in ORGANS.items():
        renumbered[label.array == value] = values[organ.name]
    table = [LabelInfo(values[organ.name], organ.name, organ.color) for organ in ORGANS.values()]
    volume_node = bridge.volume_to_volume_node(image, scene, name=name)
    segmentation_node = bridge.labelmap_to_segmentation_node(
        Volume(renumbered, label.affine),
        table,
        scene,
        reference_volume_node=volume_node,
        name=f"{name} labels",
    )
    return volume_node, segmentation_node, label.array


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def test_scene_cases_export_as_an_msd_dataset_with_labels_matched_by_name(scene, tmp_path: Path) -> None:
    names = [organ.name for organ in ORGANS.values()]
    first = _case(scene, 3, "patient A", {name: value for value, name in enumerate(names, start=1)})
    second = _case(scene, 4, "patient B", {name: 10 + value for value, name in enumerate(reversed(names))})
    pairs = scene_segmentation_pairs(scene)
    assert [(v.GetName(), s.GetName()) for v, s in pairs] == [
        ("patient A", "patient A labels"),
        ("patient B", "patient B labels"),
    ]

    dataset_json = export_scene_dataset(pairs, tmp_path / "scene_dataset", name="Two phantoms", modality="CT")
    description = json.loads(dataset_json.read_text())
    assert description["labels"] == {"0": "background", **{str(v): o.name for v, o in ORGANS.items()}}
    assert description["modality"] == {"0": "CT"} and description["numTraining"] == 2
    dataset = load_dataset(dataset_json)
    assert [label.name for label in dataset.labels if label.value] == names
    assert [case.name for case in dataset.cases] == ["patient_A", "patient_B"]
    for case, (volume_node, _, original) in zip(dataset.cases, (first, second), strict=True):
        label_map = read_volume(case.label)
        np.testing.assert_array_equal(label_map.array, original, err_msg="the label map on the volume's grid")
        image = read_volume(case.images[0])
        np.testing.assert_allclose(image.affine, label_map.affine, atol=1e-5)
        np.testing.assert_allclose(image.affine, bridge.volume_node_to_volume(volume_node).affine, atol=1e-5)
        np.testing.assert_array_equal(image.array, bridge.volume_node_to_volume(volume_node).array)
    report = validate_dataset(dataset, raise_on_error=False)
    assert report.ok, report.errors
    checked = subprocess.run(
        [sys.executable, "-m", "MedSegNASLib.cli", "dataset", "check", str(dataset_json)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_case_may_lack_a_label_and_names_match_ignoring_case(scene, tmp_path: Path) -> None:
    first = _case(scene, 3, "a", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4})
    second = _case(scene, 4, "b", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4})
    segmentation = second[1].GetSegmentation()
    segmentation.RemoveSegment("label_2")  # no spleen drawn in case b
    segmentation.GetSegment("label_1").SetName("  LIVER ")
    dataset = load_dataset(export_scene_dataset([first[:2], second[:2]], tmp_path / "d"))
    assert [label.name for label in dataset.labels if label.value] == [o.name for o in ORGANS.values()]
    expected = np.where(second[2] == 2, 0, second[2])
    np.testing.assert_array_equal(read_volume(dataset.cases[1].label).array, expected)


def test_bad_scene_cases_are_refused_and_leave_nothing(scene, tmp_path: Path) -> None:
    target = tmp_path / "d"
    a = _case(scene, 3, "a", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4})
    b = _case(scene, 4, "b", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4})
    with pytest.raises(DatasetError, match="at least 2 cases"):
        export_scene_dataset([a[:2]], target)

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing drawn")
    with pytest.raises(DatasetError, match="'nothing drawn' has no segments"):
        export_scene_dataset([a[:2], (b[0], empty)], target)

    renamed = _case(scene, 5, "c", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4})
    segmentation = renamed[1].GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentation.GetNthSegment(index).SetName(f"Segment_{index + 1}")
    with pytest.raises(
        DatasetError, match="names differ.*'c labels' has 'Segment_1', 'Segment_2'.*rename its segments"
    ):
        export_scene_dataset([a[:2], renamed[:2]], target)

    segmentation.GetNthSegment(1).SetName("Segment_1")
    with pytest.raises(DatasetError, match="two segments named 'Segment_1'"):
        export_scene_dataset([a[:2], renamed[:2]], target)

    # A segmentation moved far away from the volume it is paired with: no voxel lands on the grid.
    far = np.eye(4)
    far[:3, 3] = (5000.0, 0.0, 0.0)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = bridge._vtk_matrix_from_array(far)
    transform.SetMatrixTransformToParent(matrix)
    b[1].SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(DatasetError, match="has no voxel on the grid of volume 'b'"):
        export_scene_dataset([a[:2], b[:2]], target)
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == []

    b[1].SetAndObserveTransformNodeID(None)
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not empty"):
        export_scene_dataset([a[:2], b[:2]], target)
    assert (target / "mine.txt").read_text() == "keep"


# --------------------------------------------------------------------------------- terminology


def test_organ_names_get_snomed_ct_terminology_entries() -> None:
    assert terminology_entry("liver") == (
        "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~"
        "SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
    )
    assert "~SCT^64033007^Kidney~SCT^24028007^Right~" in terminology_entry("right kidney")
    assert "~SCT^64033007^Kidney~SCT^7771000^Left~" in terminology_entry("kidney_left")
    assert "~SCT^28231008^Gallbladder~^^~" in terminology_entry("Gall Bladder")
    assert "~SCT^89837001^Bladder~" in terminology_entry("bladder")
    lesion = terminology_entry("liver tumor")
    assert "SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~" in lesion
    assert lesion.endswith("~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^")
    assert terminology_entry("Segment_1") is None and terminology_entry("background") is None


def test_segments_of_a_segmentation_node_are_tagged_by_name(scene, tmp_path: Path) -> None:
    volume_node, segmentation_node, _ = _case(
        scene, 3, "a", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4}
    )
    segmentation = segmentation_node.GetSegmentation()
    segmentation.GetSegment("label_4").SetName("Segment_4")  # an unknown name gets no tag
    tagged = apply_terminology(segmentation_node)
    assert set(tagged) == {"label_1", "label_2", "label_3"}
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    import vtk

    def entry(segment_id: str) -> str | None:
        value = vtk.reference("")
        return str(value) if segmentation.GetSegment(segment_id).GetTag(tag, value) else None

    assert "^78961009^Spleen~" in entry("label_2")
    assert "^64033007^Kidney~SCT^24028007^Right~" in entry("label_3")
    assert entry("label_4") is None or "^85756007^Tissue~" in entry("label_4"), "the generic entry stays"
    assert segmentation.GetSegment("label_1").GetName() == "liver", "names and colors are kept"
    # Saved and loaded again (.seg.nrrd), the entry stays with the segment.
    loaded = bridge.load_segmentation(
        bridge.save_segmentation(segmentation_node, tmp_path / "a.seg.nrrd"), scene
    )
    value = vtk.reference("")
    assert loaded.GetSegmentation().GetSegment("label_1").GetTag(tag, value) and str(value) == entry(
        "label_1"
    )


def test_training_on_scene_cases_exports_them_into_the_run_and_launches(scene, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from MedSegNASLib.panels import panel_logic
    from MedSegNASLib.panels.panel_jobs import JobFollower, cancel_job

    a = _case(scene, 3, "a", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4})
    b = _case(scene, 4, "b", {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4})
    settings = SimpleNamespace(
        runsFolder=tmp_path / "runs", datasetSource="scene", datasetPath=Path("."), sceneModality="CT",
        preset="tiny", network="unet", epochs=1, patchSize=0, memoryBudget=0, gpus=1, device="cpu",
    )  # fmt: skip
    with pytest.raises(Exception, match="check at least 2 scene cases"):
        panel_logic.launch_from_settings("train", settings, scene_pairs=[a[:2]])
    run = panel_logic.launch_from_settings("train", settings, scene_pairs=[a[:2], b[:2]])
    try:
        dataset_json = run.path / "artifacts" / "inputs" / "dataset" / "dataset.json"
        assert [case.name for case in load_dataset(dataset_json).cases] == ["a", "b"]
        launched = run.worker_log.read_text()
        assert (
            f"train --dataset {dataset_json} --preset tiny --device cpu --network unet --config" in launched
        )
    finally:
        cancel_job(run)
        JobFollower(run).wait(timeout_s=60)


def test_scene_case_rows_list_pairs_and_give_back_the_checked_nodes(scene) -> None:
    from MedSegNASLib.panels.panel_logic import scene_case_rows, scene_cases

    values = {organ.name: organ.value for organ in ORGANS.values()}
    first = _case(scene, 1, "case_a", values)[:2]
    second = _case(scene, 2, "case_b", values)[:2]
    rows = scene_case_rows(scene)
    assert sorted(cells[:2] for cells, _tip, _ids in rows) == [
        ["case_a labels", "case_a"],
        ["case_b labels", "case_b"],
    ]
    assert all(cells[2] == ", ".join(o.name for o in ORGANS.values()) for cells, _tip, _ids in rows)
    ids = {cells[1]: pair for cells, _tip, pair in rows}
    assert scene_cases(scene, [ids["case_b"]]) == [second]
    scene.RemoveNode(first[1])
    assert scene_cases(scene, [ids["case_a"], ids["case_b"]]) == [second], "a removed node drops its case"


def test_each_snomed_code_has_one_name_the_one_slicer_shows() -> None:
    """One code, one meaning: Slicer's terminologies (DICOM master list) call 89837001 "Bladder"."""
    from MedSegNASLib.panels.panel_terminology import ORGAN_CODES

    meanings: dict[str, set[str]] = {}
    for organ in ORGAN_CODES:
        meanings.setdefault(organ.code, set()).add(organ.meaning)
    assert {code: names for code, names in meanings.items() if len(names) > 1} == {}
    assert meanings["89837001"] == {"Bladder"}
