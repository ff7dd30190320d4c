"""MedSegNAS logic: everything the MedSegNAS Slicer module does, usable without Slicer.

Sub-packages:
    data        volume I/O with geometry, datasets (MSD / Auto3DSeg datalists), phantoms
    jobs        the run-directory job protocol shared by every long task
    nas         DiNTS search, decode, retrain
    inference   segmentation engine
    models      model registry and safe MONAI bundle import/export
    panels      the MRML layer of the two Slicer panels (slicer bridge, panel logic, jobs for panels)

Only ``panels`` imports ``slicer``; nothing here imports Qt.
"""

__version__ = "0.1.0"
