"""Writing a model and its external data as one unit.

A save reads nothing in the output folder it did not write itself, and
deletes only files it created (checked by inode). Every file operation is
relative to one descriptor of the target folder, so a renamed folder cannot
redirect it. The order:

1. Check the target: only a missing path, a regular file or a symlink (which
   is replaced itself, never followed) may be replaced; not the input model
   (unless ``in_place``) nor any of its data files, compared by inode.
2. Copy each external-data file that must move (output in another folder) to
   ``<target name>.<token>-<n>.data`` (``token``: 64 random bits, one per save),
   created ``O_EXCL`` (an existing file is never overwritten), the source's
   permission bits, holes kept, fsync.
3. Write the model to ``.spatialdrop-<token>.tmp`` (``O_EXCL``; the replaced
   file's permission bits, or ``0666 & ~umask``), fsync.
4. ``rename`` it over the target, fsync the folder.

Readers see the old target or the new one, and the new one only once its data
files are complete: their names are new, so no model's data is ever replaced.
An exception (``KeyboardInterrupt``, the ``SystemExit`` the CLI raises for
SIGTERM, ENOSPC...) before the rename removes every file this save created. A
SIGKILL can leave them (a ``.spatialdrop-<token>.tmp`` and data files with the
same token that no model uses); nothing removes them later: telling another
process's leftovers from live files needs reading and trusting files this
process did not write. Replacing an output does not remove the data files
of the previous output, for the same reason (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import RefusedError, UserError
from . import _fs
from .external import ExternalFile, _Problem, check_tensors, location_parts, referencing_tensors
from .reading import MAX_MODEL_BYTES, LoadedModel, shown
from .skeleton import Part, SkeletonSource, expand

#: The model's temp file while it is written: ``.spatialdrop-<token>.tmp``.
TEMP_PATTERN = re.compile(r"\.spatialdrop-(?P<token>[0-9a-f]{16})\.tmp")
_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
           | getattr(os, "O_CLOEXEC", 0))


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


def _model_files(model: onnx.ModelProto, source: LoadedModel | None,
                 label: str) -> tuple[ExternalFile, ...]:
    """The model's data files, validated again against the input's folder."""
    found = referencing_tensors(model)
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


def _relocated(model: onnx.ModelProto, names: dict[str, str]) -> onnx.ModelProto:
    """A copy of ``model`` whose external-data locations are renamed by ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor, _ in referencing_tensors(out):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value in names:
                entry.value = names[entry.value]
    return out


def _serialise(model: onnx.ModelProto, source: LoadedModel | None, label: str) -> list[Part]:
    """The parts of the file to write: bytes, and ranges of a skeleton's source."""
    too_large = UserError(f"{label}: the model is more than protobuf can write (2 GiB - 1); "
                          "store the weights as external data")
    try:
        if model.ByteSize() > MAX_MODEL_BYTES:
            raise too_large
        data = model.SerializeToString()
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - EncodeError, ValueError, upb errors
        raise UserError(f"{label}: the model cannot be serialised "
                        f"({err.__class__.__name__})") from None
    parts, size = expand(data, None if source is None else source.skeleton, label)
    if size > MAX_MODEL_BYTES:
        raise too_large
    return parts


class _Save:
    """The files one save creates in the target folder, and how to undo them."""

    def __init__(self, target: _Target, token: str) -> None:
        self.target = target
        self.dfd = _fs.open_folder(target.folder)
        self.model_temp = f".spatialdrop-{token}.tmp"
        self.created: dict[str, int] = {}  # name -> inode: what abort may remove

    def _create(self, name: str, mode: int | None) -> int:
        """Create ``name`` (never an existing file); ``mode`` None: ``0666 & ~umask``."""
        fd = os.open(name, _CREATE, 0o666, dir_fd=self.dfd)
        self.created[name] = os.fstat(fd).st_ino
        if mode is not None:
            os.fchmod(fd, mode)
        return fd

    def copy_in(self, file: ExternalFile, folder: Path, name: str) -> None:
        """Copy one data file of the input to ``name`` in the target folder."""
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
            try:
                fd = self._create(name, stat.S_IMODE(file.mode) & 0o777)
            except FileExistsError:
                raise RefusedError(f"{self.target.shown}: a file named '{shown(name)}' is "
                                   "already in the output folder; it was not "
                                   "overwritten") from None
            try:
                _fs.copy_sparse(src, fd, info.st_size)
                os.fsync(fd)
            except EOFError:
                raise UserError(f"{where} shrank while it was copied") from None
            finally:
                os.close(fd)
        finally:
            os.close(src)

    def write_model(self, parts: list[Part], source: SkeletonSource | None) -> None:
        """Write the model's parts; ranges are copied from the skeleton's source file."""
        fd = self._create(self.model_temp, self.target.mode)
        try:
            ranges = any(isinstance(part, tuple) for part in parts)
            if ranges:
                assert source is not None
                source.check()
            for part in parts:
                if isinstance(part, tuple):
                    assert source is not None
                    source.copy_to(fd, *part)
                else:
                    _fs.write_all(fd, part)
            if ranges:
                assert source is not None
                source.check()  # not changed while it was copied
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        os.replace(self.model_temp, self.target.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        with contextlib.suppress(OSError):  # some file systems refuse; the rename is done
            os.fsync(self.dfd)

    def abort(self) -> None:
        """Remove every file this save created, unless its model was renamed into place."""
        model = self.created.get(self.model_temp)
        with contextlib.suppress(OSError):
            if model is not None and os.lstat(self.target.name, dir_fd=self.dfd).st_ino == model:
                return  # interrupted after the rename: the data files are the target's now
        for name, inode in self.created.items():
            with contextlib.suppress(OSError):
                if os.lstat(name, dir_fd=self.dfd).st_ino == inode:
                    os.unlink(name, dir_fd=self.dfd)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               source: LoadedModel | None = None, in_place: bool = False) -> None:
    """Write ``model`` to ``path`` atomically, together with its external data.

    ``source`` is the loaded input the model came from: its folder is where
    the model's external-data references are resolved, and the target may
    not be its model file (unless ``in_place``) nor any of its data files.
    When the target folder is the input's folder the references are kept;
    otherwise each data file is copied next to the target as
    ``<target name>.<token>-<n>.data`` and the locations are rewritten in a
    copy of ``model`` (the caller's proto is not changed). See the module
    docstring for the order of operations and what a failure leaves.
    """
    target = _check_target(path, source, in_place)
    label = target.shown
    files = _model_files(model, source, label)
    if source is not None and files:
        _refuse_input(target.path, label, source, in_place, files)
    token = secrets.token_hex(8)
    copies: dict[tuple[int, int], tuple[ExternalFile, str]] = {}
    if source is not None and not _same_folder(source.folder, target.folder):
        for file in files:  # one copy per file, however many locations name it
            copies.setdefault(file.identity, (file, f"{target.name}.{token}-{len(copies)}.data"))
    names = {file.location: copies[file.identity][1] for file in files
             if file.identity in copies}
    parts = _serialise(_relocated(model, names) if names else model, source, label)
    try:
        save = _Save(target, token)
    except OSError as err:
        raise UserError(f"{label}: folder cannot be opened ({err.strerror})") from None
    try:
        for file, name in copies.values():
            assert source is not None
            save.copy_in(file, source.folder, name)
        save.write_model(parts, None if source is None else source.skeleton)
        save.commit()
    except BaseException as err:
        save.abort()
        if isinstance(err, OSError):
            reason = err.strerror or err.__class__.__name__  # str(err) may name a temp file
            raise UserError(f"{label}: cannot be written ({reason})") from None
        raise
    finally:
        os.close(save.dfd)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
