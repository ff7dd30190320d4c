"""Interactive segmentation: clicks in RAS millimetres -> DeepEdit guidance channels -> updated masks.

* :mod:`.clicks`: the click format shared by Slicer, the CLI and tests; RAS -> voxel conversion.
* :mod:`.guidance`: guidance channels exactly as MONAI's ``monai.apps.deepedit`` transforms build
  them, and DeepEdit's click simulation for training.
* :mod:`.simulate`: the simulated user of the evaluation protocol (next click at the centre of the
  largest error region).
* :mod:`.session`: a model and an image held for a whole editing session; each click set costs one
  network pass over a local region.
* :mod:`.worker`: the persistent worker process (JSON lines over its stdin/stdout) and its client.

No module here imports ``slicer`` or ``qt``.
"""
