"""Segmentation with MONAI bundles: ``medsegnas segment`` and the engine behind it.

Importing this package loads neither torch nor MONAI.

    model = load_model("bundle/")                                    # model.py: safe bundle reading
    model = load_resolved_model("spleen_ct_segmentation")           # or a registry id (or folder/zip)
    result = segment_volume(read_volume("ct.nii.gz"), model)        # engine.py
    write_volume(result.labels, "labels.seg.nrrd", labels=model.labels)

Modules: :mod:`.engine` (the pipeline), :mod:`.model` (a bundle opened for inference),
:mod:`.geometry` (grids, resampling, windows), :mod:`.postprocess` (connected components, holes),
:mod:`.optimize` (batch-norm folding, memory layout), :mod:`.commands` (the CLI).
"""

from __future__ import annotations

#: ``--device`` choices: ``auto`` picks CUDA, then Apple MPS, then the CPU.
DEVICES = ("auto", "cpu", "cuda", "mps")
