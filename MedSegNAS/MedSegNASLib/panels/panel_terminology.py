"""Standard terminology for segments whose names are common organs: SNOMED CT codes, as Slicer stores them.

Slicer keeps a segment's meaning in its ``TerminologyEntry`` tag
(``vtkSegment.GetTerminologyEntryTagName()``), a ``~``-separated string of DICOM-style coded
concepts ``scheme^code^meaning`` (DICOM PS3.3 C.8.20.2, Segment Description)::

    <context>~<category>~<type>~<type modifier>~<anatomic context>~<region>~<region modifier>

e.g. ``Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~
SCT^64033007^Kidney~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^``. With it, the
segment is recognized by Slicer's Terminologies module, exported as a DICOM SEG with the right
codes, and matched across tools whatever its display name.

The codes are SNOMED CT concept identifiers (https://browser.ihtsdotools.org), the ones DICOM PS3.16
lists in CID 7166/7159 (anatomic structures) and CID 7151 (segmentation property types), and that
Slicer's "DICOM master list" terminology uses. Names are matched on words, so ``"liver"``,
``"Liver"``, ``"kidney_left"`` and ``"right kidney"`` are all found; unknown names get no tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import slicer

__all__ = [
    "ORGAN_CODES",
    "apply_terminology",
    "terminology_entry",
]

#: Terminology context name of Slicer's built-in DICOM list.
CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: SNOMED CT coding scheme designator in DICOM.
SCT = "SCT"
#: Category of organs: SCT 123037004 "Anatomical structure"; of lesions: SCT 49755003
#: "Morphologically altered structure" (DICOM CID 7150).
ANATOMICAL_STRUCTURE = (SCT, "123037004", "Anatomical Structure")
ALTERED_STRUCTURE = (SCT, "49755003", "Morphologically Altered Structure")
#: SCT 4147007 "Mass": the type of a tumor / lesion segment (CID 7159).
MASS = (SCT, "4147007", "Mass")
#: Laterality modifiers (DICOM CID 244): SCT 7771000 "Left", SCT 24028007 "Right".
LEFT = (SCT, "7771000", "Left")
RIGHT = (SCT, "24028007", "Right")


@dataclass(frozen=True)
class _Organ:
    words: tuple[str, ...]  # every word must be in the segment name
    code: str  # SNOMED CT concept id
    meaning: str  # DICOM code meaning


#: Common segmentation targets and their SNOMED CT codes (concept ids checked in the SNOMED CT
#: browser and DICOM PS3.16 CID 7166 "Segmentation Anatomic Structures").
ORGAN_CODES: tuple[_Organ, ...] = (
    _Organ(("liver",), "10200004", "Liver"),
    _Organ(("spleen",), "78961009", "Spleen"),
    _Organ(("kidney",), "64033007", "Kidney"),
    _Organ(("pancreas",), "15776009", "Pancreas"),
    _Organ(("stomach",), "69695003", "Stomach"),
    _Organ(("gallbladder",), "28231008", "Gallbladder"),
    _Organ(("gall", "bladder"), "28231008", "Gallbladder"),
    _Organ(("aorta",), "15825003", "Aorta"),
    _Organ(("vena", "cava"), "64131007", "Inferior vena cava"),
    _Organ(("ivc",), "64131007", "Inferior vena cava"),
    _Organ(("portal", "vein"), "32764006", "Portal vein"),
    _Organ(("esophagus",), "32849002", "Esophagus"),
    _Organ(("adrenal",), "23451007", "Adrenal gland"),
    _Organ(("duodenum",), "38848004", "Duodenum"),
    _Organ(("bladder",), "89837001", "Bladder"),  # the CodeMeaning of Slicer's terminologies
    _Organ(("lung",), "39607008", "Lung"),
    _Organ(("heart",), "80891009", "Heart"),
    _Organ(("brain",), "12738006", "Brain"),
    _Organ(("prostate",), "41216001", "Prostate"),
    _Organ(("colon",), "71854001", "Colon"),
)
#: Words that make a segment a lesion (type Mass), the organ then being its anatomic region.
LESION_WORDS = frozenset({"tumor", "tumour", "lesion", "mass", "cancer", "metastasis"})


def _coded(concept: tuple[str, str, str] | None) -> str:
    return "^".join(concept) if concept else "^^"


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z]+", name.lower().replace("_", " "))


def _organ(words: list[str]) -> _Organ | None:
    # More specific entries (more words: "gall bladder") win over shorter ones ("bladder").
    for organ in sorted(ORGAN_CODES, key=lambda o: len(o.words), reverse=True):
        if all(word in words for word in organ.words):
            return organ
    return None


def terminology_entry(name: str) -> str | None:
    """The ``TerminologyEntry`` tag value for a segment named ``name``, or None when not in the table.

    ``"right kidney"`` -> ``Kidney`` with modifier ``Right``; ``"liver tumor"`` -> category
    ``Morphologically Altered Structure``, type ``Mass``, anatomic region ``Liver``.
    """
    words = _words(name)
    organ = _organ(words)
    side = (
        LEFT
        if "left" in words or words[-1:] == ["l"]
        else RIGHT
        if "right" in words or words[-1:] == ["r"]
        else None
    )
    organ_concept = (SCT, organ.code, organ.meaning) if organ else None
    if LESION_WORDS.intersection(words):
        region_modifier = side if organ else None
        return "~".join(
            [CONTEXT, _coded(ALTERED_STRUCTURE), _coded(MASS), "^^", ANATOMIC_CONTEXT]
            + [_coded(organ_concept), _coded(region_modifier)]
        )
    if organ_concept is None:
        return None
    return "~".join(
        [CONTEXT, _coded(ANATOMICAL_STRUCTURE), _coded(organ_concept), _coded(side), ANATOMIC_CONTEXT]
        + ["^^", "^^"]
    )


def apply_terminology(segmentation_node: object, segment_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Set the ``TerminologyEntry`` tag of the segments (default: all) whose names are in the table.

    Names and colors are left as they are (they come from the model's label table). A segment that
    already has a specific terminology entry keeps it; the generic one every new segment gets
    ("Tissue") is replaced.

    Returns:
        ``{segment ID: entry}`` of the segments tagged now.
    """
    import vtk

    tag_name = slicer.vtkSegment.GetTerminologyEntryTagName()
    segmentation = segmentation_node.GetSegmentation()  # type: ignore[attr-defined]
    if segment_ids is None:
        segment_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    generic = vtk.reference("")
    slicer.vtkSegment().GetTag(tag_name, generic)  # the entry a new segment has
    tagged: dict[str, str] = {}
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        existing = vtk.reference("")
        if segment is None or (
            segment.GetTag(tag_name, existing) and str(existing) not in ("", str(generic))
        ):
            continue
        entry = terminology_entry(segment.GetName() or "")
        if entry is not None:
            segment.SetTag(tag_name, entry)
            tagged[segment_id] = entry
    return tagged
