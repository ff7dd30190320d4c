"""The model registry: MONAI bundles imported once, then run by id; plus the catalog of downloadable ones.

Layout of the home folder (``MEDSEGNAS_HOME``, default ``~/.medsegnas``)::

    <home>/
        models/
            registry.json        the index: one record per model (see ModelRecord), replaced
                                 atomically; writers hold models/.registry.lock (flock)
            <id>/                a MONAI bundle folder (configs/, models/model.pt, docs/)
            .staging-*/          imports in progress (renamed into place, or deleted)
        cache/
            downloads/           partial downloads (``*.part``), resumed by the next try
            bundles/<sha256>/    bundle archives given to resolve_model, unpacked once

Importing never runs code from the bundle: archives go through :func:`~.archive.safe_extract`,
weights through the weights-only loader, configs through :func:`~.bundle.check_config`.

**Trust decision.** A bundle whose inference config or weights need code to run (a ``$``
expression outside the safe subset, a ``scripts.*`` component, a pickled function) is still
imported, because the user may well trust it, but its record lists every problem, the import
prints them, and it is marked "needs --trust": :func:`resolve_model` reports it untrusted and the
segmentation engine refuses it until ``medsegnas models trust ID`` (or an import with
``--trust``). ``strict=True`` refuses such a bundle at import instead (the default of
``medsegnas models import``; ``--keep-untrusted`` keeps it). A corrupt bundle (no
metadata, no inference config, unreadable weights) is always refused.

Typical use::

    registry = ModelRegistry()                        # MEDSEGNAS_HOME or ~/.medsegnas
    record = registry.import_model("spleen.zip", checksum="sha256:...")
    registry.download("spleen_ct_segmentation")       # from the catalog, sha1 checked
    model = resolve_model("spleen_ct_segmentation")   # ResolvedModel(path, trusted, record)
    register_model(run_dir / "artifacts/model", source=f"search run {run_dir}")

Nothing here imports torch or MONAI until a bundle is validated, so listing models and the
catalog stays fast (and works inside Slicer at startup).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from ..atomic import write_json_atomic
from ..errors import MedSegNASError

__all__ = [
    "HOME_ENV",
    "CATALOG_ENV",
    "HASH_ALGORITHMS",
    "SEGMENT_CONFIG_IDS",
    "RegistryError",
    "ChecksumError",
    "DownloadError",
    "Checksum",
    "ModelRecord",
    "ResolvedModel",
    "CatalogEntry",
    "ModelRegistry",
    "medsegnas_home",
    "default_catalog_path",
    "load_catalog",
    "file_digests",
    "folder_digest",
    "download_file",
    "human_size",
    "structure_color",
    "label_colors",
    "resolve_model",
    "register_model",
    "resolve_model_source",
]

HOME_ENV = "MEDSEGNAS_HOME"
CATALOG_ENV = "MEDSEGNAS_CATALOG"
DEFAULT_HOME = "~/.medsegnas"
REGISTRY_FORMAT_VERSION = 1
CATALOG_FORMAT_VERSION = 1
REGISTRY_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
#: Staging folders older than this are left-overs of a killed import and are deleted.
STALE_STAGING_S = 24 * 3600
#: Largest download (bytes) unless the caller says otherwise; the whole-body CT bundle is ~250 MB.
DEFAULT_MAX_DOWNLOAD_BYTES = 4 * 1024**3
DOWNLOAD_TIMEOUT_S = 60.0
LOCK_TIMEOUT_S = 120.0
_CHUNK = 1024 * 1024

#: Hash algorithms a checksum may use: MONAI's model zoo publishes sha1 of each bundle zip
#: (``models/model_info.json``) and md5 of large files (``large_files.yml``).
HASH_ALGORITHMS: dict[str, int] = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TRUST_COMMAND = "medsegnas models trust {id}"
#: Inference-config items that ``medsegnas segment`` builds (with what they reference): only
#: problems there (and in the weights and import statements) stop an untrusted model from
#: segmenting. Keep in step with ``MedSegNASLib.inference.model.load_model``.
SEGMENT_CONFIG_IDS: tuple[str, ...] = ("network_def", "preprocessing", "inferer", "postprocessing")

ProgressCallback = Callable[[int, "int | None"], None]


class RegistryError(MedSegNASError):
    """A registry operation cannot be done: unknown or duplicate id, corrupt index, bad catalog."""


class ChecksumError(MedSegNASError):
    """A downloaded or given file does not have the checksum it should have; it was not kept."""


class DownloadError(MedSegNASError):
    """A download failed (network, HTTP status, size limit); the message says whether it can resume."""


# --------------------------------------------------------------------------------- paths


def medsegnas_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The MedSegNAS home folder: ``home`` if given, else ``$MEDSEGNAS_HOME``, else ``~/.medsegnas``."""
    chosen = home if home is not None else (os.environ.get(HOME_ENV) or DEFAULT_HOME)
    return Path(chosen).expanduser()


def default_catalog_path() -> Path:
    """The catalog file: ``$MEDSEGNAS_CATALOG`` if set, else the ``catalog.json`` shipped here."""
    override = os.environ.get(CATALOG_ENV)
    return Path(override).expanduser() if override else Path(__file__).with_name("catalog.json")


def _now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ------------------------------------------------------------------------------ checksums


@dataclass(frozen=True)
class Checksum:
    """An expected file digest: ``algorithm`` (md5, sha1, sha256, sha512) and lowercase hex."""

    algorithm: str
    hexdigest: str

    def __post_init__(self) -> None:
        algorithm = self.algorithm.lower()
        digest = self.hexdigest.strip().lower()
        if algorithm not in HASH_ALGORITHMS:
            raise ChecksumError(
                f"checksum algorithm {self.algorithm!r} is not supported (use {', '.join(HASH_ALGORITHMS)})"
            )
        if len(digest) != HASH_ALGORITHMS[algorithm] or not re.fullmatch(r"[0-9a-f]+", digest):
            raise ChecksumError(
                f"{algorithm} checksum {self.hexdigest!r} is not {HASH_ALGORITHMS[algorithm]} hex digits"
            )
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "hexdigest", digest)

    @classmethod
    def parse(cls, text: str, default_algorithm: str | None = None) -> Checksum:
        """``"sha1:9f3c..."``; bare hex takes ``default_algorithm`` or is guessed from its length."""
        text = text.strip()
        if ":" in text:
            algorithm, digest = text.split(":", 1)
            return cls(algorithm, digest)
        if default_algorithm is None:
            by_length = {length: name for name, length in HASH_ALGORITHMS.items()}
            default_algorithm = by_length.get(len(text))
            if default_algorithm is None:
                raise ChecksumError(
                    f"checksum {text!r} has {len(text)} characters, which is no md5/sha1/sha256/sha512 "
                    "hex digest; write it as ALGORITHM:HEX"
                )
        return cls(default_algorithm, text)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def _hashers(algorithms: Sequence[str]) -> dict[str, Any]:
    return {name: hashlib.new(name) for name in dict.fromkeys(["sha256", *algorithms])}


def file_digests(path: str | os.PathLike[str], algorithms: Sequence[str] = ()) -> dict[str, str]:
    """Hex digests of a file: always ``sha256`` plus each of ``algorithms``, in one read."""
    hashers = _hashers(algorithms)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def folder_digest(folder: str | os.PathLike[str]) -> str:
    """A sha256 of a folder's content: every file's relative path, size and sha256, in sorted order.

    Two copies of a bundle have the same digest wherever they live; timestamps and permissions
    do not count. Symbolic links count by their target text.
    """
    root = Path(folder)
    outer = hashlib.sha256()
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            outer.update(f"L {relative}\0{os.readlink(path)}\n".encode())
        elif path.is_file():
            digest = file_digests(path)["sha256"]
            outer.update(f"F {relative}\0{path.stat().st_size}\0{digest}\n".encode())
    return outer.hexdigest()


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _check_digest(digests: Mapping[str, str], expected: Checksum | None, what: str) -> None:
    if expected is not None and digests.get(expected.algorithm) != expected.hexdigest:
        raise ChecksumError(
            f"{what} has {expected.algorithm} {digests.get(expected.algorithm)}, expected "
            f"{expected.hexdigest}: the file is corrupt, incomplete or not the one published; "
            "nothing was kept"
        )


# ------------------------------------------------------------------------------ download


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    checksum: Checksum | None = None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    progress: ProgressCallback | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    resume: bool = True,
) -> dict[str, str]:
    """Download ``url`` (http or https) to ``dest``, checking size and checksum; resumable.

    Bytes go to ``dest + ".part"`` first. An interrupted download leaves that file, and the next
    call with the same ``dest`` asks the server for the rest (HTTP Range) when ``resume``. Only a
    complete file whose checksum matches is renamed to ``dest``.

    Args:
        url: ``http://`` or ``https://`` address.
        dest: where the file goes; its folder must exist.
        checksum: expected digest; a mismatch deletes the download.
        max_bytes: refuse (and delete) a download larger than this.
        progress: called as ``progress(bytes_done, bytes_total or None)`` after each chunk.
        timeout: seconds without data before the connection is given up.
        resume: continue a previous partial download of the same ``dest``.

    Returns:
        Hex digests of the file: ``sha256`` and the checksum's algorithm.

    Raises:
        DownloadError: not http(s), HTTP error, network failure (``.part`` kept to resume),
            too large, or shorter than announced.
        ChecksumError: the checksum does not match (nothing kept).
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url!r}: only http:// and https:// addresses are supported")
    dest = Path(dest)
    partial = dest.with_name(dest.name + ".part")
    algorithms = [checksum.algorithm] if checksum else []
    start = partial.stat().st_size if resume and partial.is_file() else 0
    headers = {"User-Agent": "MedSegNAS model registry", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # our partial file is already complete or bigger: start again
            partial.unlink(missing_ok=True)
            return download_file(
                url, dest, checksum=checksum, max_bytes=max_bytes, progress=progress, timeout=timeout
            )
        partial.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"download of {url} failed: {reason}; check the address and the network"
        ) from None

    with response:
        status = getattr(response, "status", 200)
        content_range = response.headers.get("Content-Range", "")
        if start and not (status == 206 and content_range.startswith(f"bytes {start}-")):
            start = 0  # the server sends the whole file: start again
        length_header = response.headers.get("Content-Length")
        remaining = int(length_header) if length_header and length_header.isdigit() else None
        total = start + remaining if remaining is not None else None
        if total is not None and total > max_bytes:
            partial.unlink(missing_ok=True)
            raise DownloadError(
                f"download of {url} is {human_size(total)}, more than the limit of {human_size(max_bytes)}; "
                "nothing was kept"
            )
        hashers = _hashers(algorithms)
        mode = "ab" if start else "wb"
        if start:
            with open(partial, "rb") as previous:
                while chunk := previous.read(_CHUNK):
                    for hasher in hashers.values():
                        hasher.update(chunk)
        done = start
        try:
            with open(partial, mode) as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    done += len(chunk)
                    if done > max_bytes:
                        out.close()
                        partial.unlink(missing_ok=True)
                        raise DownloadError(
                            f"download of {url} exceeds the limit of {human_size(max_bytes)}; nothing was kept"
                        )
                    out.write(chunk)
                    for hasher in hashers.values():
                        hasher.update(chunk)
                    if progress is not None:
                        progress(done, total)
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
            raise DownloadError(
                f"download of {url} was interrupted after {human_size(done)} ({exc}); run the same "
                "command again to resume it"
            ) from None
    if total is not None and done < total:
        raise DownloadError(
            f"download of {url} ended after {human_size(done)} of {human_size(total)}; run the same "
            "command again to resume it"
        )
    digests = {name: hasher.hexdigest() for name, hasher in hashers.items()}
    try:
        _check_digest(digests, checksum, f"download of {url}")
    except ChecksumError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    return digests


# -------------------------------------------------------------------------------- colors

#: Display colors (0-255 RGB) of structures that :data:`~..data.datasets.KNOWN_STRUCTURE_COLORS`
#: lacks, by whole word of the label name: the recommended colors of 3D Slicer's general
#: anatomy terminology (GenericAnatomyColors), and the spelling "Kideny" of the BTCV bundle.
EXTRA_STRUCTURE_COLORS: dict[str, tuple[int, int, int]] = {
    "artery": (216, 101, 79),
    "vein": (0, 151, 206),
    "vena": (0, 151, 206),
    "veins": (0, 151, 206),
    "muscle": (192, 104, 88),
    "gluteus": (192, 104, 88),
    "iliopsoas": (192, 104, 88),
    "autochthon": (192, 104, 88),
    "brain": (250, 250, 225),
    "colon": (204, 168, 143),
    "trachea": (182, 228, 255),
    "rib": (241, 214, 145),
    "femur": (241, 214, 145),
    "humerus": (241, 214, 145),
    "scapula": (241, 214, 145),
    "clavicula": (241, 214, 145),
    "hip": (241, 214, 145),
    "sacrum": (241, 214, 145),
    "kideny": (185, 102, 83),
}
_FINDING_WORDS = ("tumor", "tumour", "cancer", "lesion", "cyst", "neoplasm")


def structure_color(name: str, value: int) -> tuple[float, float, float]:
    """Display color (RGB in [0, 1]) of a label: findings first, then anatomy, then a palette color."""
    from ..data.datasets import label_color

    lowered = name.lower()
    if not any(word in lowered for word in _FINDING_WORDS):
        for word in re.split(r"[^a-z0-9]+", lowered):
            if word in EXTRA_STRUCTURE_COLORS:
                return tuple(c / 255.0 for c in EXTRA_STRUCTURE_COLORS[word])  # type: ignore[return-value]
    elif "neoplasm" in lowered:
        return label_color("tumor", value)
    return tuple(float(c) for c in label_color(name, value))  # type: ignore[return-value]


#: Largest mix toward white or black used to tell apart labels that would share a color.
_MAX_SHADE = 0.6


def label_colors(label_names: Mapping[int, str]) -> dict[int, tuple[float, float, float]]:
    """Colors (RGB in [0, 1]) for a whole label table: :func:`structure_color`, with labels that
    would share a color (left/right organs, vertebrae, ribs, tumor sub-regions) given distinct
    lighter and darker shades of it, so that every segment can be told apart.

    The first label of each color keeps it; the others are mixed toward white and black in
    turn, by evenly spaced amounts up to :data:`_MAX_SHADE`.
    """
    base = {value: structure_color(label_names[value], value) for value in sorted(label_names)}
    groups: dict[tuple[float, float, float], list[int]] = {}
    for value, color in base.items():
        if label_names[value].strip().lower() != "background":
            groups.setdefault(color, []).append(value)
    colors = dict(base)
    for color, values in groups.items():
        step = _MAX_SHADE / max(1, len(values) // 2)
        for index, value in enumerate(values[1:], start=1):
            amount = step * ((index + 1) // 2)
            target = 1.0 if index % 2 else 0.0
            colors[value] = tuple(c + amount * (target - c) for c in color)  # type: ignore[assignment]
    return colors


def _valid_color(color: Any) -> bool:
    return (
        isinstance(color, (list, tuple))
        and len(color) == 3
        and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0.0 <= c <= 1.0 for c in color)
    )


# -------------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class CatalogEntry:
    """A downloadable bundle of the catalog.

    Attributes:
        name: bundle name (the catalog key), e.g. ``"spleen_ct_segmentation"``.
        version: published version the URL and checksum belong to.
        url: the bundle zip.
        checksum: digest of the zip as published (sha1 for the MONAI model zoo).
        labels: ``[{"value", "name", "color" (RGB 0..1)}]``, as in the bundle's ``channel_def``.
        modality, input_channels, description, task, license, homepage: as published.
        multilabel: output channels are independent (sigmoid) masks, not exclusive labels.
        needs_trust: its inference config uses bundle code or expressions outside the safe subset
            (``trust_problems`` says which), so it runs only after ``--trust``.
        weights: ``{"path", "url", "md5"}`` of the weights, fetched when the zip lacks them.
        runs: whether ``medsegnas segment`` runs it from its published config: ``"untrusted"``,
            ``"trust"`` (only with ``--trust``) or ``"no"``; ``runs_reason`` says why
            (:func:`~MedSegNASLib.inference.model.run_status`); empty when not checked.
        interactive: one line on its interactive use when that differs from the above (VISTA3D:
            :func:`~MedSegNASLib.interactive.vista.trust_verdict`); empty otherwise.
    """

    name: str
    version: str
    url: str
    checksum: Checksum
    labels: tuple[dict[str, Any], ...]
    modality: str
    input_channels: int
    description: str = ""
    task: str = ""
    license: str = ""
    homepage: str = ""
    multilabel: bool = False
    needs_trust: bool = False
    trust_problems: tuple[str, ...] = ()
    weights: dict[str, str] | None = None
    runs: str = ""
    runs_reason: str = ""
    interactive: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["checksum"] = {"algorithm": self.checksum.algorithm, "value": self.checksum.hexdigest}
        data["labels"] = list(self.labels)
        data["trust_problems"] = list(self.trust_problems)
        return data


def _catalog_entry(name: str, raw: Any, path: Path) -> CatalogEntry:
    where = f"catalog {path}: entry {name!r}"
    if not isinstance(raw, dict):
        raise RegistryError(f"{where} is not an object")

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        value = raw.get(key)
        wrong_type = not isinstance(value, kind) or (isinstance(value, bool) and kind is int)
        if wrong_type or not value:  # also refuses "", [], {} and 0 channels
            raise RegistryError(f"{where}: '{key}' is missing or not a {getattr(kind, '__name__', kind)}")
        return value

    url = need("url", str)
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise RegistryError(f"{where}: url {url!r} is not an http(s) address")
    raw_checksum = need("checksum", dict)
    try:
        checksum = Checksum(str(raw_checksum.get("algorithm", "")), str(raw_checksum.get("value", "")))
    except ChecksumError as exc:
        raise RegistryError(f"{where}: {exc}") from None
    labels = need("labels", list)
    for label in labels:
        if (
            not isinstance(label, dict)
            or not isinstance(label.get("value"), int)
            or not isinstance(label.get("name"), str)
            or not _valid_color(label.get("color"))
        ):
            raise RegistryError(
                f"{where}: label {label!r} needs an integer value, a name and an RGB color in [0, 1]"
            )
    weights = raw.get("weights")
    if weights is not None and not (
        isinstance(weights, dict) and all(isinstance(weights.get(k), str) for k in ("path", "url", "md5"))
    ):
        raise RegistryError(f"{where}: 'weights' needs path, url and md5")
    return CatalogEntry(
        name=name,
        version=str(need("version", str)),
        url=url,
        checksum=checksum,
        labels=tuple(labels),
        modality=str(need("modality", str)),
        input_channels=int(need("input_channels", int)),
        description=str(raw.get("description", "")),
        task=str(raw.get("task", "")),
        license=str(raw.get("license", "")),
        homepage=str(raw.get("homepage", "")),
        multilabel=bool(raw.get("multilabel", False)),
        needs_trust=bool(raw.get("needs_trust", False)),
        trust_problems=tuple(str(p) for p in raw.get("trust_problems", ())),
        weights=dict(weights) if weights else None,
        runs=str(raw.get("runs", "")),
        runs_reason=str(raw.get("runs_reason", "")),
        interactive=str(raw.get("interactive", "")),
    )


def load_catalog(path: str | os.PathLike[str] | None = None) -> dict[str, CatalogEntry]:
    """The downloadable bundles: name -> entry, checked field by field.

    Args:
        path: catalog file; default :func:`default_catalog_path` (``$MEDSEGNAS_CATALOG`` or the
            shipped ``catalog.json``).

    Raises:
        RegistryError: unreadable file, invalid JSON, or an entry without url, checksum or labels.
    """
    path = Path(path) if path is not None else default_catalog_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"catalog file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"catalog file {path} could not be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"catalog file {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise RegistryError(f"catalog file {path} has no 'models' object")
    return {name: _catalog_entry(name, raw, path) for name, raw in models.items()}


# -------------------------------------------------------------------------------- records


@dataclass
class ModelRecord:
    """What the registry knows about one imported model (one entry of ``registry.json``).

    Attributes:
        id: registry id, also the folder name under ``<home>/models``.
        name, version, description, task: from the bundle's metadata.
        source: where it came from: ``folder <path>``, ``zip <path>``, ``url <url>``,
            ``catalog <name> <version>``, or what a caller of :func:`register_model` says
            (``search run <path>``).
        sha256: of the archive (downloads, zips) or the folder's content digest (folders).
        sha256_of: ``"archive"`` or ``"folder"``.
        verified: the checksum that was checked at import (``"sha1:..."``), if any.
        trusted: the user allowed this bundle to run code (``--trust``).
        imported: ISO 8601 local time.
        labels: ``[{"value", "name", "color": [r, g, b] in 0..1}]``.
        modality, input_channels, output_channels, network: from metadata / inference config.
        size_bytes: size of the bundle folder.
        problems: what needs code to run in the parts ``medsegnas segment`` uses: the weights
            files and the config items of :data:`SEGMENT_CONFIG_IDS` (empty: runs untrusted).
        workflow_problems: further problems in the rest of the inference config, which only
            MONAI's own ``monai.bundle run`` workflow would hit (informational).
        catalog_name: the catalog entry it was downloaded from.
    """

    id: str
    name: str
    version: str
    source: str
    sha256: str
    sha256_of: str
    trusted: bool
    imported: str
    labels: list[dict[str, Any]]
    modality: str | None = None
    input_channels: int | None = None
    output_channels: int | None = None
    size_bytes: int = 0
    task: str = ""
    description: str = ""
    network: str | None = None
    problems: list[str] = field(default_factory=list)
    workflow_problems: list[str] = field(default_factory=list)
    verified: str | None = None
    catalog_name: str | None = None

    @property
    def needs_trust(self) -> bool:
        """The bundle needs code to run and the user has not trusted it."""
        return bool(self.problems) and not self.trusted

    @property
    def trust_state(self) -> str:
        """``"trusted"``, ``"safe"`` (runs without code) or ``"needs --trust"``."""
        if self.trusted:
            return "trusted"
        return "needs --trust" if self.problems else "safe"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to be opened by the segmentation engine.

    Attributes:
        path: the bundle folder (holding ``configs/metadata.json``).
        trusted: the user allowed it to run code (only registry models can be trusted).
        record: the registry record, or None for a folder/archive given directly.
        kind: ``"registry"``, ``"folder"`` or ``"archive"``.
    """

    path: Path
    trusted: bool
    record: ModelRecord | None = None
    kind: str = "folder"


# ---------------------------------------------------------------------------------- locks


@contextlib.contextmanager
def _exclusive_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed; :class:`filelock.FileLock`, as the run
    directories use); released on exit, or by the system when the holder dies."""
    lock = FileLock(str(path), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=timeout, poll_interval=0.05)
    except Timeout:
        raise RegistryError(
            f"the model registry is locked by another process ({path}) for more than "
            f"{timeout:.0f} s; try again when its import has finished"
        ) from None
    try:
        yield
    finally:
        lock.release(force=True)


# ------------------------------------------------------------------------------- registry


def _is_url(source: str | os.PathLike[str]) -> bool:
    return isinstance(source, str) and urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


def _is_archive_name(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _default_id(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._-")
    return cleaned[:100] or "model"


def _check_id(model_id: str) -> str:
    if not MODEL_ID_PATTERN.match(model_id):
        raise RegistryError(
            f"model id {model_id!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(at most 100, starting with a letter or digit)"
        )
    return model_id


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ModelRegistry:
    """The models of one home folder: import, list, look up, trust and remove.

    Readers (``list``, ``get``) read ``registry.json`` without locking: it is always replaced
    atomically. Writers take ``models/.registry.lock`` (``flock``) for the read-modify-write of
    the index and the rename of the bundle folder, so concurrent imports from several
    processes all end up in the index.
    """

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = medsegnas_home(home)
        self.models_dir = self.home / "models"
        self.index_path = self.models_dir / REGISTRY_FILE
        self.cache_dir = self.home / "cache"

    # ---------------------------------------------------------------- index

    def _read_index(self) -> dict[str, ModelRecord]:
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RegistryError(f"model registry {self.index_path} could not be read: {exc}") from None
        try:
            data = json.loads(text)
            models = data["models"]
            return {model_id: ModelRecord.from_dict(raw) for model_id, raw in models.items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(
                f"model registry {self.index_path} is corrupt ({type(exc).__name__}: {exc}); restore it "
                "from a backup or delete it and import the models again"
            ) from None

    def _write_index(self, records: Mapping[str, ModelRecord]) -> None:
        data = {
            "format_version": REGISTRY_FORMAT_VERSION,
            "models": {model_id: records[model_id].to_dict() for model_id in sorted(records)},
        }
        write_json_atomic(self.index_path, data)

    @contextlib.contextmanager
    def _locked_index(self) -> Iterator[dict[str, ModelRecord]]:
        """The index, locked against other writers; written back when the block succeeds."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.models_dir / LOCK_FILE):
            records = self._read_index()
            yield records
            self._write_index(records)

    # --------------------------------------------------------------- queries

    def list(self) -> list[ModelRecord]:
        """All records, sorted by id."""
        records = self._read_index()
        return [records[k] for k in sorted(records)]

    def get(self, model_id: str) -> ModelRecord:
        """The record of ``model_id``.

        Raises:
            RegistryError: no such model (the message lists the known ids).
        """
        records = self._read_index()
        if model_id not in records:
            known = ", ".join(sorted(records)) or "none yet"
            raise RegistryError(
                f"no model with id {model_id!r} in {self.models_dir} (known: {known}); "
                "see medsegnas models list"
            )
        return records[model_id]

    def __contains__(self, model_id: object) -> bool:
        return isinstance(model_id, str) and model_id in self._read_index()

    def model_path(self, model_id: str) -> Path:
        """The bundle folder of ``model_id`` (whether or not it exists)."""
        return self.models_dir / model_id

    def check_model(self, model_id: str) -> tuple[list[str], list[str]]:
        """Re-run the config checks of an imported bundle (the allow-lists may have grown since).

        Returns:
            (problems of the items segment builds, further problems of the whole config); see
            :class:`ModelRecord`. Weights are not re-read.
        """
        from .bundle import inspect_bundle

        return _config_problems(inspect_bundle(self.model_path(model_id), require_weights=False))

    # -------------------------------------------------------------- changes

    def import_model(
        self,
        source: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        trusted: bool = False,
        checksum: Checksum | str | None = None,
        force: bool = False,
        strict: bool = False,
        source_label: str | None = None,
        progress: ProgressCallback | None = None,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        catalog_entry: CatalogEntry | None = None,
        if_exists: Literal["error", "replace", "rename"] | None = None,
    ) -> ModelRecord:
        """Copy, unpack or download a MONAI bundle into the registry, validating it without running it.

        Args:
            source: a bundle folder, a bundle archive (.zip, .tar.gz ...) or an http(s) URL of one.
            model_id: registry id; default: the bundle's metadata name.
            trusted: allow the bundle to run code (``--trust``); stored in the record.
            checksum: expected digest of the archive/download (``Checksum``, ``"sha256:HEX"`` or
                bare hex); for a folder, its :func:`folder_digest`. A mismatch keeps nothing.
            force: replace a model with the same id (same as ``if_exists="replace"``).
            strict: refuse a bundle that needs code to run unless ``trusted``.
            source_label: what to record as the source (default: ``folder|zip|url <where>``).
            progress: download progress callback ``(bytes_done, bytes_total or None)``.
            max_bytes: largest download or archive content accepted.
            catalog_entry: the catalog entry being downloaded: its label colors are used and its
                weights fetched when the archive lacks them.
            if_exists: ``"error"`` (default), ``"replace"`` or ``"rename"`` (append ``-2``, ``-3``...).

        Returns:
            The new record (already in ``registry.json``).

        Raises:
            RegistryError: duplicate id, invalid id, or ``strict`` and the bundle needs code.
            ChecksumError, DownloadError: see :func:`download_file`.
            ModelFileError: not a bundle, corrupt archive or weights (from :mod:`.bundle`).
            UnsafeArchiveError: path traversal / oversize archive, or a folder linking outside itself.
        """
        policy = if_exists or ("replace" if force else "error")
        expected = Checksum.parse(checksum) if isinstance(checksum, str) else checksum
        if model_id is not None:
            _check_id(model_id)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._clean_stale_staging()
        staging = self.models_dir / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            bundle_dir, digest, digest_of, verified, label = self._stage(
                source, staging, expected, progress, max_bytes
            )
            record = self._validate(
                bundle_dir,
                model_id=model_id,
                trusted=trusted,
                source=source_label or label,
                sha256=digest,
                sha256_of=digest_of,
                verified=verified,
                catalog_entry=catalog_entry,
                progress=progress,
            )
            if strict and record.needs_trust:
                raise RegistryError(
                    f"{source} needs code to run ({record.problems[0]}"
                    + (f" and {len(record.problems) - 1} more" if len(record.problems) > 1 else "")
                    + "); not imported. Import it with --trust only if you trust its source "
                    "(or --keep-untrusted to keep it marked 'needs --trust')"
                )
            return self._install(bundle_dir, record, policy)
        finally:
            _remove_tree(staging)

    def _clean_stale_staging(self) -> None:
        now = time.time()
        for path in self.models_dir.glob(f"{STAGING_PREFIX}*"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > STALE_STAGING_S:
                    _remove_tree(path)

    def _stage(
        self,
        source: str | os.PathLike[str],
        staging: Path,
        expected: Checksum | None,
        progress: ProgressCallback | None,
        max_bytes: int,
    ) -> tuple[Path, str, str, str | None, str]:
        """Put the bundle in ``staging/bundle``; returns (bundle root, sha256, of what, verified, label)."""
        from .archive import safe_extract
        from .bundle_root import find_bundle_root
        from .safety import ModelFileError

        verified = str(expected) if expected else None
        if _is_url(source):
            url = str(source)
            downloads = self.cache_dir / "downloads"
            downloads.mkdir(parents=True, exist_ok=True)
            basename = Path(urllib.parse.urlsplit(url).path).name or "bundle.zip"
            key = hashlib.sha256(url.encode()).hexdigest()[:16]
            archive = downloads / f"{key}-{basename}"
            digests = download_file(url, archive, checksum=expected, max_bytes=max_bytes, progress=progress)
            try:
                safe_extract(archive, staging / "bundle", max_total_bytes=max_bytes)
            finally:
                archive.unlink(missing_ok=True)
            return find_bundle_root(staging / "bundle"), digests["sha256"], "archive", verified, f"url {url}"

        path = Path(source).expanduser()
        if path.is_dir():
            root = find_bundle_root(path)
            _copy_bundle_folder(root, staging / "bundle")
            digest = folder_digest(staging / "bundle")
            if expected is not None:
                if expected.algorithm != "sha256":
                    raise ChecksumError(
                        f"a folder is checked by its sha256 content digest, not {expected.algorithm}"
                    )
                _check_digest({"sha256": digest}, expected, f"folder {root} (content digest)")
            return staging / "bundle", digest, "folder", verified, f"folder {path.resolve()}"
        if path.is_file():
            digests = file_digests(path, [expected.algorithm] if expected else [])
            _check_digest(digests, expected, f"archive {path}")
            safe_extract(path, staging / "bundle", max_total_bytes=max_bytes)
            kind = "zip" if path.suffix.lower() == ".zip" else "archive"
            return (
                find_bundle_root(staging / "bundle"),
                digests["sha256"],
                "archive",
                verified,
                f"{kind} {path.resolve()}",
            )
        if not path.exists():
            raise ModelFileError(f"{source} is not an existing bundle folder or archive, nor an http(s) URL")
        raise ModelFileError(f"{source} is neither a folder nor a file")

    def _validate(
        self,
        root: Path,
        *,
        model_id: str | None,
        trusted: bool,
        source: str,
        sha256: str,
        sha256_of: str,
        verified: str | None,
        catalog_entry: CatalogEntry | None,
        progress: ProgressCallback | None,
    ) -> ModelRecord:
        """Read, check (without running) and describe the staged bundle."""
        from .bundle import inspect_bundle, load_config_file
        from .safety import ModelFileError, UnsafeModelError, load_checkpoint

        if catalog_entry is not None and catalog_entry.weights:
            self._fetch_missing_weights(root, catalog_entry, progress)
        info = inspect_bundle(root, require_weights=True)
        config = load_config_file(info.inference_config)
        problems, workflow_problems = _config_problems(info, config)
        assert info.weights is not None
        for weights in sorted(
            {info.weights, *info.root.glob("models/*.pt"), *info.root.glob("models/*.pth")}
        ):
            try:
                load_checkpoint(weights, trusted=False)
            except UnsafeModelError as exc:
                problems.append(exc.problem)
            except ModelFileError:
                if weights == info.weights:
                    raise
                problems.append(
                    f"weights file {weights.relative_to(info.root)} could not be read as PyTorch weights"
                )
        network_def = config.get("network_def")
        network = str(network_def.get("_target_")) if isinstance(network_def, dict) else None
        return ModelRecord(
            id=model_id or _default_id(info.name),
            name=info.name,
            version=info.version,
            source=source,
            sha256=sha256,
            sha256_of=sha256_of,
            trusted=bool(trusted),
            imported=_now_iso(),
            labels=_label_table(info.metadata, info.label_names, catalog_entry),
            modality=info.modality,
            input_channels=info.in_channels,
            output_channels=info.out_channels,
            size_bytes=_folder_size(info.root),
            task=str(info.metadata.get("task") or ""),
            description=info.description,
            network=network,
            problems=problems,
            workflow_problems=workflow_problems,
            verified=verified,
            catalog_name=catalog_entry.name if catalog_entry else None,
        )

    def _fetch_missing_weights(
        self, root: Path, entry: CatalogEntry, progress: ProgressCallback | None
    ) -> None:
        from .bundle_root import find_bundle_root

        assert entry.weights is not None
        bundle = find_bundle_root(root)
        relative = Path(entry.weights["path"])
        if relative.is_absolute() or ".." in relative.parts:
            raise RegistryError(
                f"catalog entry {entry.name!r}: weights path {relative} is outside the bundle"
            )
        target = bundle / relative
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        download_file(
            entry.weights["url"], target, checksum=Checksum("md5", entry.weights["md5"]), progress=progress
        )

    def _install(self, bundle_dir: Path, record: ModelRecord, policy: str) -> ModelRecord:
        """Rename the staged bundle into place and add its record, under the registry lock."""
        trash: Path | None = None
        with self._locked_index() as records:
            if policy == "rename":
                base, n = record.id, 2
                while record.id in records or self.model_path(record.id).exists():
                    record.id = f"{base[:95]}-{n}"
                    n += 1
            target = self.model_path(record.id)
            if record.id in records or target.exists():
                if policy != "replace":
                    what = "is already registered" if record.id in records else "has a folder but no record"
                    raise RegistryError(
                        f"a model with id {record.id!r} {what} in {self.models_dir}; choose another id "
                        "with --name, or replace it with --force"
                    )
                if target.exists():
                    trash = self.models_dir / f"{TRASH_PREFIX}{record.id}-{secrets.token_hex(4)}"
                    os.rename(target, trash)
            os.rename(bundle_dir, target)
            records[record.id] = record
        if trash is not None:
            _remove_tree(trash)
        return record

    def download(
        self,
        name: str,
        *,
        catalog: str | os.PathLike[str] | Mapping[str, CatalogEntry] | None = None,
        model_id: str | None = None,
        trusted: bool = False,
        force: bool = False,
        strict: bool = False,
        progress: ProgressCallback | None = None,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> ModelRecord:
        """Download a catalog bundle (checksum from the catalog) and import it; id defaults to ``name``.

        Raises:
            RegistryError: ``name`` is not in the catalog (the message lists the names); and
                everything :meth:`import_model` raises.
        """
        entries = catalog if isinstance(catalog, Mapping) else load_catalog(catalog)
        if name not in entries:
            raise RegistryError(
                f"{name!r} is not in the model catalog (available: {', '.join(sorted(entries))}); "
                "see medsegnas models catalog"
            )
        entry = entries[name]
        return self.import_model(
            entry.url,
            model_id=model_id or _default_id(name),
            trusted=trusted,
            checksum=entry.checksum,
            force=force,
            strict=strict,
            source_label=f"catalog {entry.name} {entry.version} ({entry.url})",
            progress=progress,
            max_bytes=max_bytes,
            catalog_entry=entry,
        )

    def remove(self, model_id: str) -> ModelRecord:
        """Delete a model's folder and record.

        Raises:
            RegistryError: no such model.
        """
        trash: Path | None = None
        with self._locked_index() as records:
            if model_id not in records:
                known = ", ".join(sorted(records)) or "none"
                raise RegistryError(f"no model with id {model_id!r} to remove (known: {known})")
            target = self.model_path(model_id)
            if target.exists():
                trash = self.models_dir / f"{TRASH_PREFIX}{model_id}-{secrets.token_hex(4)}"
                os.rename(target, trash)
            record = records.pop(model_id)
        if trash is not None:
            _remove_tree(trash)
        return record

    def set_trusted(self, model_id: str, trusted: bool = True) -> ModelRecord:
        """Mark a model trusted (it may run code from its config and weights) or untrusted."""
        with self._locked_index() as records:
            if model_id not in records:
                raise RegistryError(f"no model with id {model_id!r} (see medsegnas models list)")
            records[model_id].trusted = bool(trusted)
            return records[model_id]

    def resolve(self, spec: str | os.PathLike[str]) -> ResolvedModel:
        """See :func:`resolve_model`."""
        from .bundle_root import find_bundle_root
        from .safety import ModelFileError

        text = os.fspath(spec)
        looks_like_path = (
            not isinstance(spec, str)
            or os.sep in text
            or "/" in text
            or text.startswith(".")
            or _is_archive_name(Path(text))
        )
        if not looks_like_path:
            records = self._read_index()
            if text in records:
                path = self.model_path(text)
                if not (path / "configs").is_dir():
                    raise RegistryError(
                        f"model {text!r} is registered but its folder {path} is missing or incomplete; "
                        f"remove it (medsegnas models remove {text}) and import it again"
                    )
                return ResolvedModel(
                    path=path, trusted=records[text].trusted, record=records[text], kind="registry"
                )
        path = Path(text).expanduser()
        if path.is_dir():
            return ResolvedModel(path=find_bundle_root(path), trusted=False, record=None, kind="folder")
        if path.is_file():
            return ResolvedModel(
                path=self._unpacked_archive(path), trusted=False, record=None, kind="archive"
            )
        known = ", ".join(sorted(self._read_index())) or "none yet"
        raise ModelFileError(
            f"model {text!r} is neither a registered model id (known: {known}; see medsegnas models list) "
            "nor an existing bundle folder or archive"
        )

    def _unpacked_archive(self, archive: Path) -> Path:
        """The bundle inside ``archive``, unpacked once into ``cache/bundles/<sha256>``."""
        from .archive import safe_extract
        from .bundle_root import find_bundle_root
        from .safety import ModelFileError

        digest = file_digests(archive)["sha256"]
        dest = self.cache_dir / "bundles" / digest
        if not dest.is_dir():
            try:
                safe_extract(archive, dest)
            except ModelFileError:
                if not dest.is_dir():  # another process unpacked the same archive meanwhile
                    raise
        return find_bundle_root(dest)


def _config_problems(info: Any, config: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """(problems in what segment builds, the other problems of the whole inference config).

    The first list decides the label: "safe" only when the whole inference path passes the
    static checks *and* a dry build (networks on the meta device, every limit in force); see
    :func:`~.bundle.inference_path_problems`.
    """
    from .bundle import check_config, inference_path_problems, load_config_file

    config = config if config is not None else load_config_file(info.inference_config)
    ids = [i for i in SEGMENT_CONFIG_IDS if i in config]
    everything = check_config(config, bundle_root=info.root)
    if not ids:  # segment cannot run it anyway; judge the whole config
        return everything, []
    needed = inference_path_problems(info.root, config, ids)
    return needed, [p for p in everything if p not in needed]


def _copy_bundle_folder(root: Path, dest: Path) -> None:
    """Copy a bundle folder, refusing links that point outside it (they could leak other files)."""
    from .safety import UnsafeArchiveError

    root_real = os.path.realpath(root)
    for path in root.rglob("*"):
        if path.is_symlink():
            target = os.path.realpath(path)
            if not (target == root_real or target.startswith(root_real + os.sep)):
                raise UnsafeArchiveError(
                    f"bundle folder {root}: {path.relative_to(root)} is a link to {target}, outside the "
                    "bundle; nothing was imported"
                )
    shutil.copytree(root, dest, symlinks=True)


def _label_table(
    metadata: Mapping[str, Any], label_names: Mapping[int, str], entry: CatalogEntry | None
) -> list[dict[str, Any]]:
    """Labels with colors: the bundle's own ``medsegnas.labels``, else names from ``channel_def``
    colored as the catalog says, else by :func:`structure_color`."""
    section = metadata.get("medsegnas")
    own = section.get("labels") if isinstance(section, dict) else None
    if (
        isinstance(own, list)
        and own
        and all(
            isinstance(x, dict)
            and isinstance(x.get("value"), int)
            and isinstance(x.get("name"), str)
            and _valid_color(x.get("color"))
            for x in own
        )
    ):
        return [
            {"value": x["value"], "name": x["name"], "color": [float(c) for c in x["color"]]} for x in own
        ]
    catalog_labels = {int(x["value"]): x for x in entry.labels} if entry else {}
    names = dict(label_names) or {value: str(x["name"]) for value, x in catalog_labels.items()}
    derived = label_colors(names)
    table = []
    for value, name in sorted(names.items()):
        known = catalog_labels.get(value)
        color = list(known["color"]) if known and known["name"] == name else list(derived[value])
        table.append({"value": value, "name": name, "color": color})
    return table


# ------------------------------------------------------------------------ module helpers


def resolve_model_source(model: str | os.PathLike[str]) -> str | Path:
    """``--model``: a ``medsegnas train`` run directory becomes its ``artifacts/model`` bundle;
    anything else (registry id, bundle folder or archive) is returned as given."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir() and ((path / "job.json").is_file() or (path / "status.json").is_file()):
        bundle = path / "artifacts" / "model"
        if not (bundle / "configs").is_dir():
            raise MedSegNASError(
                f"run directory {path} holds no trained model (artifacts/model); give the run of a finished "
                "'medsegnas train' job, or a bundle folder or a registered model id"
            )
        return bundle
    return model if isinstance(model, Path) else text


def resolve_model(
    spec: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None
) -> ResolvedModel:
    """Find the bundle that ``--model SPEC`` names, for the segmentation engine.

    ``spec`` is the run directory of a ``medsegnas train`` job (its exported bundle,
    :func:`resolve_model_source`), a registry id (checked first unless it looks like a path: it
    contains a slash, starts with ``.`` or ends in an archive suffix), a bundle folder (or a folder
    whose only sub-folder is one), or a bundle archive, unpacked once
    (:func:`~.archive.safe_extract`) into ``<home>/cache/bundles/<sha256>``.

    Returns:
        ``ResolvedModel(path, trusted, record, kind)``: only registry models can be trusted; folders
        and archives given directly are always untrusted.

    Raises:
        ModelFileError: neither an id nor an existing folder/archive, or not a bundle;
        RegistryError: a registered model whose folder is gone; UnsafeArchiveError: see safe_extract.
    """
    return ModelRegistry(home).resolve(resolve_model_source(spec))


def register_model(
    folder: str | os.PathLike[str],
    *,
    source: str,
    trusted: bool = False,
    name: str | None = None,
    if_exists: Literal["error", "replace", "rename"] = "rename",
    home: str | os.PathLike[str] | None = None,
) -> ModelRecord:
    """Add a bundle folder made by MedSegNAS (a searched or fine-tuned model) to the registry.

    The folder is copied (the run directory keeps its own copy) and validated like any import.

    Args:
        folder: the exported bundle folder.
        source: what produced it, e.g. ``"search run runs/search-20250101-120000-ab12cd"``.
        trusted: mark it trusted (an export of MedSegNAS needs no code, so normally not needed).
        name: registry id; default: the bundle's metadata name.
        if_exists: on an id clash, ``"rename"`` (default: ``name-2``, ``name-3`` ...),
            ``"replace"`` or ``"error"``.
        home: home folder (default ``$MEDSEGNAS_HOME`` or ``~/.medsegnas``).
    """
    return ModelRegistry(home).import_model(
        folder, model_id=name, trusted=trusted, source_label=source, if_exists=if_exists
    )
