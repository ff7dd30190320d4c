"""The figures of a network's dry build (:func:`~.capabilities.network_size`), importable without MONAI
(a compiled bundle, :mod:`~MedSegNASLib.inference.compiled`, stores them for the memory plan)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NetworkSize"]


@dataclass(frozen=True)
class NetworkSize:
    """What the ``meta``-device dry build found (see :func:`~.capabilities.network_size`).

    Attributes:
        problem: why the network is refused, or None.
        parameters: parameters and buffers (numbers).
        activation_bytes: the sum of every leaf module's outputs for one forward pass of
            ``batch`` windows of ``patch`` (None when the meta forward could not follow the shapes).
        batch / patch: the forward pass measured.
    """

    problem: str | None
    parameters: int
    activation_bytes: int | None
    batch: int
    patch: tuple[int, ...]
