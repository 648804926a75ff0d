"""Writing a model and its external data as one unit.

Order of a save (every file operation relative to one descriptor of the
target folder, so a renamed or re-linked folder cannot redirect it):

1. Check the target: only a missing path, a regular file or a symlink (which
   is replaced itself, never followed) may be replaced; not the input model
   (unless ``in_place``) nor any of its data files, compared by inode.
2. Under an exclusive ``flock`` on the folder, remove stale temp files of dead
   processes (``.spatialdrop-<pid>-<token>[-d<n>|-j].tmp``): if a dead save
   never renamed its model, the data files it had already published
   (``*.<token>-<n>.data``) go too; if it did, the old data files its journal
   lists are removed.
3. Copy each external-data file that must move (output in another folder) to
   a temp file (``O_EXCL``, the source's permission bits, holes kept, fsync).
4. Write the model to a temp file (fsync); mode: the replaced file's, or
   0666 & ~umask.
5. Under the folder lock: note the data files the old target owned
   (``<target>.<token>-<n>.data``) that the new model does not use (journal),
   publish the data files under fresh names (``link``, never overwriting),
   ``rename`` the model over the target, fsync the folder, remove the old
   data files and the journal.

A failure or ``BaseException`` (``KeyboardInterrupt``, ``SystemExit`` from a
SIGTERM handler) at any point removes every file this save created; a
SIGKILL leaves only temp files of the recognisable pattern (and never a
partial target), which the next save in that folder removes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import RefusedError, UserError
from . import _fs
from .external import (
    ExternalFile,
    _Problem,
    check_tensors,
    location_parts,
    referencing_tensors,
)
from .reading import MAX_MODEL_BYTES, LoadedModel, shown
from .skeleton import Part, SkeletonSource, expand, read_skeleton
from .tensors import Where, walk_tensors

#: Temp files of a save: ``.spatialdrop-<pid>-<token>.tmp`` (the model),
#: ``...-d<n>.tmp`` (data file n), ``...-j.tmp`` (journal of old data files).
TEMP_PATTERN = re.compile(r"\.spatialdrop-(?P<pid>[0-9]{1,10})-(?P<token>[0-9a-f]{16})"
                          r"(?:-(?P<kind>d[0-9]{1,6}|j))?\.tmp")
_ANY_DATA = re.compile(r"(?P<owner>.+)\.(?P<token>[0-9a-f]{16})-[0-9]{1,6}\.data")
_JOURNAL_LIMIT = 1 << 20
_SCAN_CHUNK = 1 << 20
_WRITE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                | getattr(os, "O_CLOEXEC", 0))
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK,
            errno.EXDEV}


def data_file_pattern(target_name: str) -> re.Pattern[str]:
    """Names of the data files a save copied next to ``target_name``."""
    return re.compile(re.escape(target_name) + r"\.[0-9a-f]{16}-[0-9]{1,6}\.data")


def is_temp_name(name: str) -> bool:
    """True for the name of a temp file this module creates."""
    return TEMP_PATTERN.fullmatch(name) is not None


@dataclass(frozen=True)
class _Target:
    path: Path          # as given
    folder: Path
    name: str
    mode: int | None    # permission bits of the regular file it replaces

    @property
    def shown(self) -> str:
        return shown(self.path)


def _check_target(path: str | os.PathLike, source: LoadedModel | None,
                  in_place: bool) -> _Target:
    text = os.fspath(path)
    target = Path(text)
    label = shown(text)
    if not text or target.name in ("", ".", ".."):
        raise UserError(f"{label}: not a file name")
    folder = target.parent
    try:
        folder_info = os.stat(folder)
    except FileNotFoundError:
        raise UserError(f"{label}: folder {shown(folder)} does not exist") from None
    except OSError as err:
        raise UserError(f"{label}: folder {shown(folder)} cannot be reached "
                        f"({err.strerror})") from None
    if not stat.S_ISDIR(folder_info.st_mode):
        raise UserError(f"{label}: {shown(folder)} is not a folder")
    if is_temp_name(target.name):
        raise UserError(f"{label}: this name is reserved for temporary files of this tool")
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        info = None
    except OSError as err:
        raise UserError(f"{label}: cannot be inspected ({err.strerror})") from None
    mode = None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"{label}: is a directory")
        if stat.S_ISREG(info.st_mode):
            mode = stat.S_IMODE(info.st_mode) & 0o777
        elif not stat.S_ISLNK(info.st_mode):
            raise RefusedError(f"{label}: is {_fs.describe_kind(info.st_mode)}; only regular "
                               "files are replaced")
    if source is not None:
        _refuse_input(target, label, source, in_place)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{label}: folder {shown(folder)} is not writable")
    return _Target(path=target, folder=folder, name=target.name, mode=mode)


def _refuse_input(target: Path, label: str, source: LoadedModel, in_place: bool,
                  files: tuple[ExternalFile, ...] = ()) -> None:
    """Refuse a target that is (resolves to, by inode) the input or one of its data files."""
    try:
        info = os.stat(target)
    except OSError:
        return
    identity = (info.st_dev, info.st_ino)
    for file in (*source.data_files, *files):
        if identity == file.identity:
            raise RefusedError(
                f"{label}: is the external data file '{shown(file.location)}' of the input "
                f"{shown(source.path)}; writing there would destroy its weights")
    if identity == source.identity and not in_place:
        raise RefusedError(f"{label}: is the input model {shown(source.path)}; "
                           "use --in-place to replace it")


def check_output_path(path: str | os.PathLike, source: LoadedModel | None = None,
                      in_place: bool = False) -> None:
    """Raise the error :func:`save_model` would raise for this output path, before slow work.

    The folder must exist and be writable; an existing target must be a
    regular file or a symlink (a directory, FIFO, device or socket is
    refused); it must not be the input model (unless ``in_place``) or any of
    the input's external data files, compared by device and inode.
    """
    _check_target(path, source, in_place)


# --- The model's external data ------------------------------------------------------


def _normalised(location: str) -> str | None:
    try:
        return "/".join(location_parts(location))
    except _Problem:
        return None


def _locations(tensors: list[tuple[onnx.TensorProto, Where]]) -> set[str]:
    found = set()
    for tensor, _ in tensors:
        for entry in tensor.external_data:
            if entry.key == "location":
                name = _normalised(entry.value)
                if name is not None:
                    found.add(name)
    return found


def _model_files(found: list[tuple[onnx.TensorProto, Where]], source: LoadedModel | None,
                 label: str) -> tuple[ExternalFile, ...]:
    """The model's data files, validated again against the input's folder."""
    if source is None:
        if found:
            raise UserError(f"{label}: the model refers to external data but the folder of "
                            "its input is unknown")
        return ()
    try:
        files = check_tensors(found, source.folder)
    except UserError as err:
        raise type(err)(f"{label}: {err}") from None
    known = {file.location: file for file in source.data_files}
    for file in files:
        before = known.get(file.location)
        if before is not None and (before.identity, before.size) != (file.identity, file.size):
            raise UserError(f"{label}: external data '{shown(file.location)}' of "
                            f"{shown(source.path)} changed while it was processed")
    return files


def _owner(location: str) -> str | None:
    """The model name a copied data file (``<name>.<token>-<n>.data``) belongs to."""
    name = _normalised(location)
    if name is None or "/" in name:
        return None
    match = _ANY_DATA.fullmatch(name)
    return match["owner"] if match else None


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _serialise(model: onnx.ModelProto, source: LoadedModel | None,
               label: str) -> tuple[list[Part], int]:
    """The parts of the file to write (bytes, and ranges of a skeleton's source) and its size."""
    try:
        size = model.ByteSize()
        if size > MAX_MODEL_BYTES:
            raise UserError(f"{label}: the model is {size} bytes, more than protobuf can write "
                            "(2 GiB - 1); store the weights as external data")
        data = model.SerializeToString()
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - EncodeError, ValueError, upb errors
        raise UserError(f"{label}: the model cannot be serialised "
                        f"({err.__class__.__name__})") from None
    parts, size = expand(data, None if source is None else source.skeleton, label)
    if size > MAX_MODEL_BYTES:
        raise UserError(f"{label}: the model is {size} bytes, more than protobuf can write "
                        "(2 GiB - 1); store the weights as external data")
    return parts, size


# --- The folder: temp files, the lock, old data -------------------------------------


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    """An exclusive ``flock`` on the target folder (if the file system has one)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        locked = True
    except OSError:
        locked = False
    try:
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _unlink_regular(dfd: int, name: str) -> None:
    """Remove ``name`` if it is a regular file; never fails."""
    try:
        if stat.S_ISREG(os.lstat(name, dir_fd=dfd).st_mode):
            os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def _mentions(fd: int, size: int, pattern: re.Pattern[str]) -> bool:
    """True if the bytes of ``fd`` contain a match of ``pattern`` (read in chunks)."""
    needle = re.compile(pattern.pattern.encode("utf-8", "surrogateescape"))
    overlap = len(needle.pattern) + 64  # longer than any match
    position = 0
    while position < size:
        start = max(0, position - overlap)  # a match may straddle two chunks
        chunk = os.pread(fd, min(_SCAN_CHUNK, size - position) + position - start, start)
        if len(chunk) <= position - start:
            break
        if needle.search(chunk):
            return True
        position = start + len(chunk)
    return False


def _owned_references(dfd: int, target_name: str) -> set[str] | None:
    """Data files named for ``target_name`` that the current target file refers to.

    ``None`` when that cannot be told (unreadable or unparsable target): then
    nothing is removed. The file is scanned for candidate names first (in
    chunks) and read as a skeleton (no weights) only if one appears.
    """
    try:
        fd, info = _fs.open_regular(target_name, dir_fd=dfd)
    except FileNotFoundError:
        return set()
    except _fs.NotRegular as err:
        return set() if stat.S_ISLNK(err.mode) else None
    except OSError:
        return None
    pattern = data_file_pattern(target_name)
    try:
        if info.st_size == 0:
            return set()
        if info.st_size > MAX_MODEL_BYTES:
            return None
        if not _mentions(fd, info.st_size, pattern):
            return set()
        found = read_skeleton(fd, info.st_size)  # the weights are not needed, only locations
        data = _fs.read_exactly(fd, info.st_size) if found is None else found.data
        model = onnx.ModelProto.FromString(data)
        del data, found
    except Exception:  # noqa: BLE001 - best effort: an unreadable old target keeps its files
        return None
    finally:
        os.close(fd)
    tensors = [(tensor, where) for tensor, where in walk_tensors(model) if tensor.external_data]
    return {name for name in _locations(tensors) if pattern.fullmatch(name)}


@dataclass
class _DataTemp:
    temp: str
    final: str
    inode: int | None = None


class _Save:
    """The files one save creates in the target folder, and how to undo them."""

    def __init__(self, target: _Target, token: str) -> None:
        self.target = target
        self.token = token
        self.pid = os.getpid()
        self.dfd = _fs.open_folder(target.folder)
        self.data: list[_DataTemp] = []
        self.model_temp = self._temp_name("")
        self.journal = self._temp_name("-j")
        self.old: list[str] = []
        self.replacing = False
        self.committed = False

    def _temp_name(self, suffix: str) -> str:
        return f".spatialdrop-{self.pid}-{self.token}{suffix}.tmp"

    def close(self) -> None:
        os.close(self.dfd)

    def _create(self, name: str, mode: int) -> int:
        fd = os.open(name, _WRITE_FLAGS, 0o600, dir_fd=self.dfd)
        os.fchmod(fd, mode)
        return fd

    # Step 2
    def remove_stale(self) -> None:
        """Remove the temp files of dead processes, and what their saves left half done."""
        with _locked(self.dfd):
            temps: dict[tuple[int, str], list[tuple[str, str | None]]] = {}
            published: dict[str, list[str]] = {}
            for entry in os.scandir(self.dfd):
                match = TEMP_PATTERN.fullmatch(entry.name)
                if match:
                    key = (int(match["pid"]), match["token"])
                    temps.setdefault(key, []).append((entry.name, match["kind"]))
                    continue
                match = _ANY_DATA.fullmatch(entry.name)
                if match:
                    published.setdefault(match["token"], []).append(entry.name)
            for (pid, token), entries in temps.items():
                if pid == self.pid or _fs.pid_alive(pid):
                    continue
                kinds = {kind for _, kind in entries}
                if None in kinds:  # its model was never renamed: its data files are orphans
                    for name in published.get(token, []):
                        _unlink_regular(self.dfd, name)
                elif "j" in kinds:  # its model was renamed: finish removing old data files
                    self._finish_journal(f".spatialdrop-{pid}-{token}-j.tmp")
                for name, _ in entries:
                    _unlink_regular(self.dfd, name)

    def _finish_journal(self, name: str) -> None:
        try:
            fd, info = _fs.open_regular(name, dir_fd=self.dfd)
            try:
                if info.st_size > _JOURNAL_LIMIT:
                    return
                record = json.loads(_fs.read_exactly(fd, info.st_size))
            finally:
                os.close(fd)
            target, remove = record["target"], record["remove"]
        except (OSError, EOFError, ValueError, TypeError, KeyError):
            return
        if not isinstance(target, str) or not isinstance(remove, list):
            return
        referenced = _owned_references(self.dfd, target)
        if referenced is None:
            return
        pattern = data_file_pattern(target)
        for old in remove:
            if isinstance(old, str) and pattern.fullmatch(old) and old not in referenced:
                _unlink_regular(self.dfd, old)

    # Step 3
    def copy_in(self, file: ExternalFile, folder: Path, index: int) -> str:
        """Copy one data file of the input into a temp file; return its final name."""
        record = _DataTemp(self._temp_name(f"-d{index}"),
                           f"{self.target.name}.{self.token}-{index}.data")
        self.data.append(record)
        where = f"{self.target.shown}: external data '{shown(file.location)}'"
        try:
            src, info = _fs.open_in_folder(folder, location_parts(file.location))
        except (_fs.NotRegular, _Problem):
            raise RefusedError(f"{where} is no longer a regular file in the model "
                               "folder") from None
        except OSError as err:
            raise UserError(f"{where} cannot be opened ({err.strerror})") from None
        try:
            if ((info.st_dev, info.st_ino), info.st_size) != (file.identity, file.size):
                raise UserError(f"{where} changed while it was processed")
            fd = self._create(record.temp, stat.S_IMODE(file.mode) & 0o777)
            try:
                record.inode = os.fstat(fd).st_ino
                _fs.copy_sparse(src, fd, info.st_size)
                os.fsync(fd)
            except EOFError:
                raise UserError(f"{where} shrank while it was copied") from None
            finally:
                os.close(fd)
        finally:
            os.close(src)
        return record.final

    # Step 4
    def write_model(self, parts: list[Part], source: SkeletonSource | None) -> None:
        """Write the model's parts; ranges are copied from the skeleton's source file."""
        mode = self.target.mode if self.target.mode is not None else _fs.default_mode()
        fd = self._create(self.model_temp, mode)
        try:
            copying = any(isinstance(part, tuple) for part in parts)
            if copying:
                assert source is not None
                source.check()
            for part in parts:
                if isinstance(part, tuple):
                    assert source is not None
                    source.copy_to(fd, *part)
                else:
                    _fs.write_all(fd, part)
            if copying:
                assert source is not None
                source.check()  # not changed while it was copied
            os.fsync(fd)
        finally:
            os.close(fd)

    # Step 5
    def commit(self, new_locations: set[str]) -> None:
        with _locked(self.dfd):
            owned = _owned_references(self.dfd, self.target.name) or set()
            self.old = sorted(owned - new_locations)
            if self.old:
                fd = self._create(self.journal, 0o600)
                try:
                    _fs.write_all(fd, json.dumps({"target": self.target.name,
                                                  "remove": self.old}).encode())
                finally:
                    os.close(fd)
            for record in self.data:
                self._publish(record)
            self.replacing = True
            os.replace(self.model_temp, self.target.name,
                       src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
            self.committed = True
            _fs.fsync_folder(self.dfd)
            self._remove_old()

    def _publish(self, record: _DataTemp) -> None:
        """Give a data temp file its final name, never overwriting an existing file."""
        try:
            os.link(record.temp, record.final, src_dir_fd=self.dfd, dst_dir_fd=self.dfd,
                    follow_symlinks=False)
        except FileExistsError:
            raise RefusedError(f"{self.target.shown}: a file named '{shown(record.final)}' "
                               "appeared in the output folder; it was not overwritten") from None
        except OSError as err:
            if err.errno not in _NO_LINK:
                raise
            try:  # no hard links here: rename, having checked under the lock
                os.lstat(record.final, dir_fd=self.dfd)
            except FileNotFoundError:
                os.rename(record.temp, record.final, src_dir_fd=self.dfd,
                          dst_dir_fd=self.dfd)
                return
            raise RefusedError(f"{self.target.shown}: a file named '{shown(record.final)}' "
                               "appeared in the output folder; it was not overwritten") from None
        os.unlink(record.temp, dir_fd=self.dfd)

    def _remove_old(self) -> None:
        pattern = data_file_pattern(self.target.name)
        for name in self.old:
            if pattern.fullmatch(name):
                _unlink_regular(self.dfd, name)
        with contextlib.suppress(OSError):
            os.unlink(self.journal, dir_fd=self.dfd)

    def abort(self) -> None:
        """Undo this save: every temp file, and the published data files unless committed."""
        committed = self.committed
        if self.replacing and not committed:
            try:
                os.lstat(self.model_temp, dir_fd=self.dfd)
            except FileNotFoundError:
                committed = True  # interrupted right after the rename
            except OSError:
                pass
        for record in self.data:
            with contextlib.suppress(OSError):
                os.unlink(record.temp, dir_fd=self.dfd)
            if not committed and record.inode is not None:
                with contextlib.suppress(OSError):
                    if os.lstat(record.final, dir_fd=self.dfd).st_ino == record.inode:
                        os.unlink(record.final, dir_fd=self.dfd)
        with contextlib.suppress(OSError):
            os.unlink(self.model_temp, dir_fd=self.dfd)
        if committed:
            self._remove_old()
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.journal, dir_fd=self.dfd)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               source: LoadedModel | None = None, in_place: bool = False) -> None:
    """Write ``model`` to ``path`` atomically, together with its external data.

    ``source`` is the loaded input the model came from: its folder is where
    the model's external-data references are resolved, and the target may
    not be its model file (unless ``in_place``) nor any of its data files.
    When the target folder is the input's folder the references are kept
    (data files another output owns, ``<name>.<token>-<n>.data``, are copied
    instead); otherwise each data file is copied next to the target as
    ``<target name>.<token>-<n>.data`` and the locations are rewritten in a
    copy of ``model`` (the caller's proto is not changed). See the module
    docstring for the order of operations and what a failure leaves.
    """
    target = _check_target(path, source, in_place)
    label = target.shown
    found = referencing_tensors(model)
    files = _model_files(found, source, label)
    if source is not None and files:
        _refuse_input(target.path, label, source, in_place, files)
    same_folder = source is not None and _same_folder(source.folder, target.folder)
    moving = [file for file in files
              if not same_folder or _owner(file.location) not in (None, target.name)]
    token = secrets.token_hex(8)
    by_identity: dict[tuple[int, int], ExternalFile] = {}
    for file in moving:
        by_identity.setdefault(file.identity, file)
    index = {identity: n for n, identity in enumerate(by_identity)}
    rename = {file.location: f"{target.name}.{token}-{index[file.identity]}.data"
              for file in moving}
    out = model
    if rename:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        found = referencing_tensors(out)
        for tensor, _ in found:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value in rename:
                    entry.value = rename[entry.value]
    parts, _ = _serialise(out, source, label)
    new_locations = _locations(found)
    try:
        save = _Save(target, token)
    except OSError as err:
        raise UserError(f"{label}: folder cannot be opened ({err.strerror})") from None
    try:
        save.remove_stale()
        for identity, file in by_identity.items():
            assert source is not None
            save.copy_in(file, source.folder, index[identity])
        save.write_model(parts, None if source is None else source.skeleton)
        save.commit(new_locations)
    except BaseException as err:
        save.abort()
        if isinstance(err, OSError):
            reason = err.strerror or err.__class__.__name__  # str(err) may name a temp file
            raise UserError(f"{label}: cannot be written ({reason})") from None
        raise
    finally:
        save.close()
