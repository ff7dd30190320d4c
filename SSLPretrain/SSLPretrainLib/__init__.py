"""SSLPretrain logic: self-supervised pretraining of Swin UNETR encoders, usable without Slicer.

Pretext tasks, losses, the SSL head, pretraining and fine-tuning live here (they arrive with
their issue); the ``sslpretrain`` command line (:mod:`SSLPretrainLib.cli`) is their entry point.
Jobs, volume I/O and errors come from :mod:`MedSegNASLib`: both packages ship in the same
extension and share one job protocol.

Nothing here imports ``slicer`` or Qt.
"""

from MedSegNASLib import __version__

__all__ = ["__version__"]
