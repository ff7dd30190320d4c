"""Unpacking bundle archives (.zip, .tar, .tar.gz) so that no entry lands outside the destination.

Every entry is checked from the archive's headers before anything is written: no absolute paths
or drive letters, no ``..``, no links pointing outside, no device files or FIFOs, and the
declared total size and entry count within limits (a zip bomb is refused without inflating it).
Entries are then written into a temporary folder next to the destination, re-checking the real
path of every write and counting the bytes actually inflated, and the folder is renamed to the
destination only when everything succeeded.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .safety import ModelFileError, UnsafeArchiveError

__all__ = ["DEFAULT_MAX_TOTAL_BYTES", "DEFAULT_MAX_FILES", "safe_extract"]

DEFAULT_MAX_TOTAL_BYTES = 4 * 1024**3
DEFAULT_MAX_FILES = 10_000
#: Longest symlink target read from a zip entry (the target is the entry's content).
_MAX_LINK_BYTES = 4096
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class _Entry:
    name: str  # as written in the archive, for messages
    parts: tuple[str, ...]  # safe relative path
    kind: str  # "file", "dir", "symlink", "hardlink"
    size: int
    link: str | None
    executable: bool
    member: Any  # ZipInfo or TarInfo


class _Refused(Exception):
    """An entry breaks a rule; carries the reason, the entry is named by the caller."""


def _member_parts(name: str) -> tuple[str, ...]:
    """The entry's path as safe relative parts; raises _Refused for absolute or ``..`` paths."""
    if "\x00" in name:
        raise _Refused("has a NUL character in its name")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise _Refused("has an absolute path")
    parts = tuple(p for p in normalized.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _Refused("has a '..' path component")
    return parts


def _check_link_target(parts: tuple[str, ...], link: str) -> None:
    """A symlink at ``parts`` pointing to ``link`` must stay inside the destination."""
    if not link:
        raise _Refused("is a symlink with an empty target")
    normalized = link.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise _Refused(f"is a symlink to the absolute path {link!r}")
    joined = posixpath.normpath(posixpath.join(*parts[:-1], normalized) if len(parts) > 1 else normalized)
    if joined == ".." or joined.startswith("../"):
        raise _Refused(f"is a symlink pointing outside the destination ({link!r})")


def _zip_entries(zf: zipfile.ZipFile) -> Iterator[_Entry]:
    for info in zf.infolist():
        try:
            parts = _member_parts(info.filename)
            mode = info.external_attr >> 16
            kind, link = "file", None
            if stat.S_ISLNK(mode):
                if info.file_size > _MAX_LINK_BYTES:
                    raise _Refused("is a symlink with an over-long target")
                kind, link = "symlink", zf.read(info).decode("utf-8", "replace")
                _check_link_target(parts, link)
            elif info.is_dir():
                kind = "dir"
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise _Refused("is a device file, FIFO or socket")
            if info.flag_bits & 0x1:
                raise _Refused("is encrypted")
        except _Refused as exc:
            yield _Entry(info.filename, (), "refused", 0, str(exc), False, info)
            return
        yield _Entry(info.filename, parts, kind, info.file_size, link, bool(mode & 0o111), info)


def _tar_entries(tf: tarfile.TarFile) -> Iterator[_Entry]:
    for member in tf:
        try:
            parts = _member_parts(member.name)
            link = None
            if member.isreg():
                kind = "file"
            elif member.isdir():
                kind = "dir"
            elif member.issym():
                kind, link = "symlink", member.linkname
                _check_link_target(parts, link)
            elif member.islnk():
                kind, link = "hardlink", member.linkname
                try:
                    _member_parts(link)
                except _Refused:
                    raise _Refused(f"is a hard link to {link!r}, outside the destination") from None
            else:
                raise _Refused("is a device file, FIFO or other special file")
        except _Refused as exc:
            yield _Entry(member.name, (), "refused", 0, str(exc), False, member)
            return
        yield _Entry(
            member.name,
            parts,
            kind,
            member.size if kind == "file" else 0,
            link,
            bool(member.mode & 0o111),
            member,
        )


def _checked_entries(
    entries: Iterator[_Entry], archive: Path, max_total_bytes: int, max_files: int
) -> list[_Entry]:
    """All entries, with the limits checked from the headers before anything is written."""
    checked: list[_Entry] = []
    total = 0
    for entry in entries:
        if entry.kind == "refused":
            raise UnsafeArchiveError(
                f"archive {archive}: entry {entry.name!r} {entry.link}; nothing was extracted"
            )
        checked.append(entry)
        if len(checked) > max_files:
            raise UnsafeArchiveError(
                f"archive {archive} has more than {max_files} entries (at {entry.name!r}); nothing was extracted"
            )
        total += entry.size
        if total > max_total_bytes:
            raise UnsafeArchiveError(
                f"archive {archive} would unpack to more than {_size(max_total_bytes)} "
                f"(reached at entry {entry.name!r}); nothing was extracted"
            )
    return checked


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def _inside(root_real: str, path: str | Path) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real + os.sep)


def _write_entries(
    entries: list[_Entry], root: Path, open_member: Any, archive: Path, max_total_bytes: int
) -> None:
    root_real = os.path.realpath(root)
    written_total = 0
    for entry in entries:
        if not entry.parts:
            continue
        target = root.joinpath(*entry.parts)

        def refuse(reason: str, entry: _Entry = entry) -> UnsafeArchiveError:
            return UnsafeArchiveError(
                f"archive {archive}: entry {entry.name!r} {reason}; nothing was extracted"
            )

        parent = target.parent
        if not _inside(root_real, parent):
            raise refuse("would be written outside the destination through a link")
        parent.mkdir(parents=True, exist_ok=True)
        if not _inside(root_real, parent):
            raise refuse("would be written outside the destination through a link")
        if target.is_symlink() or target.is_file():
            target.unlink()  # a later duplicate entry replaces the earlier one, never writes through it
        if entry.kind == "dir":
            target.mkdir(exist_ok=True)
        elif entry.kind == "symlink":
            assert entry.link is not None
            if not _inside(root_real, parent / entry.link):
                raise refuse(f"is a symlink pointing outside the destination ({entry.link!r})")
            os.symlink(entry.link, target)
        elif entry.kind == "hardlink":
            assert entry.link is not None
            source = root.joinpath(*_member_parts(entry.link))
            if source.is_symlink() or not source.is_file() or not _inside(root_real, source):
                raise refuse(f"is a hard link to {entry.link!r}, which is not a file extracted before it")
            shutil.copyfile(source, target)
        else:
            with open_member(entry.member) as src, open(target, "xb") as dst:
                written = 0
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > entry.size or written_total > max_total_bytes:
                        raise refuse("inflates to more bytes than its header says (a zip bomb?)")
                    dst.write(chunk)
            target.chmod(0o755 if entry.executable else 0o644)


def safe_extract(
    archive: str | Path,
    dest: str | Path,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) archive into ``dest``, refusing anything that could escape it.

    Args:
        archive: the archive file.
        dest: folder to create; it must not exist or be empty. Its parent is created if needed.
        max_total_bytes: most bytes all entries may declare (and inflate to) together.
        max_files: most entries (files, folders and links) the archive may hold.

    Returns:
        ``dest``. (Bundle archives often hold one top-level folder: see
        :func:`~.bundle.find_bundle_root`.)

    Raises:
        UnsafeArchiveError: an absolute or ``..`` path, a link pointing outside, a device file,
            or the size/count limits exceeded; names the entry. Nothing is left behind.
        ModelFileError: missing, corrupt or unsupported archive, or ``dest`` not empty.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ModelFileError(f"archive {archive} does not exist or is not a file")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelFileError(
            f"cannot extract {archive}: destination {dest} exists and is not an empty folder"
        )

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                entries = _checked_entries(_zip_entries(zf), archive, max_total_bytes, max_files)
                _extract_atomically(entries, dest, zf.open, archive, max_total_bytes)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, mode="r:*") as tf:
                entries = _checked_entries(_tar_entries(tf), archive, max_total_bytes, max_files)

                def open_tar_member(member: tarfile.TarInfo) -> IO[bytes]:
                    handle = tf.extractfile(member)
                    if handle is None:
                        raise tarfile.ReadError(f"entry {member.name!r} has no data")
                    return handle

                _extract_atomically(entries, dest, open_tar_member, archive, max_total_bytes)
        else:
            raise ModelFileError(f"{archive} is not a .zip or .tar(.gz) archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        # zlib.error and LZMAError are not OSError subclasses everywhere; ValueError covers bad headers.
        raise ModelFileError(
            f"archive {archive} is corrupt or truncated: {' '.join(str(exc).split())}"
        ) from None
    except Exception as exc:
        if type(exc).__module__ in ("zlib", "_lzma", "lzma", "_bz2"):
            raise ModelFileError(f"archive {archive} is corrupt: {exc}") from None
        raise
    return dest


def _extract_atomically(
    entries: list[_Entry], dest: Path, open_member: Any, archive: Path, limit: int
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        _write_entries(entries, staging, open_member, archive, limit)
        if dest.exists():
            dest.rmdir()  # checked empty above
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
