"""The MRML layer: what the two Slicer panels do, without Qt, tested with slicer-core's MRML classes.

Only this subpackage imports ``slicer`` (the MRML classes and logics that exist both in Slicer and in
the ``slicer-core`` wheel); nothing here imports Qt. The module files ``MedSegNAS.py`` and
``SSLPretrain.py`` connect widgets to it.

    slicer_bridge       volume node <-> array + geometry, labelmap -> segmentation node, tables, plots
    panel_logic         MedSegNAS panel: segment, models, launch jobs from the panel's settings
    panel_jobs          launch, follow, cancel and resume jobs (shared with SSLPretrain)
    panel_runs          runs table, run details, curves as plot charts, Dice tables, predictions
    panel_dataset       a training dataset from scene volumes and segmentations; dataset cases
    panel_terminology   segment names, colors and terminology entries
    panel_selftest      the phantom data and bundle the module self-tests use
"""
