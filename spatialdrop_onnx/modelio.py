"""Loading and saving ONNX files safely.

Writes go to a temporary file in the destination folder, are fsynced, then
renamed over the destination: no half-written output, and a symlink planted
at the output path is replaced, never followed.

External data is validated *before* anything else happens and is never read:
every ``external_data`` entry (graph initializers, ``Constant`` and other
tensor attributes, sparse tensors, subgraphs, model-local functions) must
name a regular, singly-linked file inside the model's folder, reached without
symlinks, with numeric in-range ``offset``/``length`` and no unknown key.
On save, data files are referenced in place when the output sits in the same
folder as the input, and otherwise copied next to the output (streamed in
chunks, holes of sparse files preserved), so the output always refers to
files in its own folder.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, TensorProto

from .errors import UserError

#: ``external_data`` keys we accept. ``basepath`` is refused: it redirects reads.
KNOWN_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
#: Oldest IR version we accept (IR 3 introduced opset imports).
MIN_IR_VERSION = 3
_COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class LoadedModel:
    """A model read from a file, and the folder its external data is relative to."""

    model: onnx.ModelProto
    path: Path
    folder: Path


def external_constant_reader(folder: str | os.PathLike):  # noqa: ANN201 - placeholder
    """Reader of small external constants: none yet (such constants stay unknown)."""
    return None


def load_model(path: str | os.PathLike) -> LoadedModel:
    return LoadedModel(_load_proto(path), Path(path), _folder_of(Path(path)))


def _load_proto(
    path: str | os.PathLike, *, validate_external: bool = True
) -> onnx.ModelProto:
    """Load an ONNX model without reading external data; one-line errors for bad files.

    Refuses missing files, directories, empty or corrupt protobufs, non-ONNX
    files, IR/opset versions this onnx cannot handle, and (unless
    ``validate_external`` is false) any unsafe external-data reference.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: is a directory, expected an .onnx file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise UserError(f"{path}: file is empty")
    data = path.read_bytes()
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise UserError(f"{path}: not a valid ONNX model ({err.__class__.__name__})") from None
    check_versions(model, str(path))
    if validate_external and may_have_external_data(data):
        validate_external_data(model, path.parent)
    return model


def may_have_external_data(serialized: bytes) -> bool:
    """False only if no tensor in these model bytes can refer to external data.

    Every such tensor encodes ``data_location = EXTERNAL`` (field 14, value 1:
    bytes 0x70 0x01), so their absence proves there is none; the full walk
    over every tensor is then skipped (it costs ~0.2 s on 90,000 nodes).
    """
    return b"\x70\x01" in serialized


def check_versions(model: onnx.ModelProto, label: str = "model") -> None:
    """Refuse a model with no graph, or an IR/opset version outside what onnx supports."""
    if not model.HasField("graph") or not model.opset_import:
        raise UserError(f"{label}: not a valid ONNX model (no graph or opset import)")
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        raise UserError(
            f"{label}: IR version {model.ir_version} is not supported "
            f"(this onnx reads {MIN_IR_VERSION}..{onnx.IR_VERSION})"
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not 1 <= opset.version <= newest:
            raise UserError(
                f"{label}: default-domain opset {opset.version} is not supported "
                f"(this onnx knows 1..{newest})"
            )


# --- External data ----------------------------------------------------------


def _attr_tensors(attr: AttributeProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    if attr.type == AttributeProto.TENSOR:
        yield attr.t, where
    elif attr.type == AttributeProto.TENSORS:
        for tensor in attr.tensors:
            yield tensor, where
    elif attr.type == AttributeProto.SPARSE_TENSOR:
        yield attr.sparse_tensor.values, where
        yield attr.sparse_tensor.indices, where
    elif attr.type == AttributeProto.SPARSE_TENSORS:
        for sparse in attr.sparse_tensors:
            yield sparse.values, where
            yield sparse.indices, where


def _graph_tensors(graph: GraphProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    for tensor in graph.initializer:
        yield tensor, where
    for sparse in graph.sparse_initializer:
        yield sparse.values, where
        yield sparse.indices, where
    yield from _node_tensors(graph.node, where)


def _node_tensors(nodes, where: str) -> Iterator[tuple[TensorProto, str]]:  # noqa: ANN001
    for node in nodes:
        label = node.name or node.op_type
        for attr in node.attribute:
            yield from _attr_tensors(attr, f"{where}, node {label!r}")
            if attr.type == AttributeProto.GRAPH:
                yield from _graph_tensors(attr.g, f"{where}/{label}/{attr.name}")
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graph_tensors(sub, f"{where}/{label}/{attr.name}")


def iter_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """Every TensorProto stored in ``model`` with a label saying where it sits."""
    yield from _graph_tensors(model.graph, "graph")
    for function in model.functions:
        yield from _node_tensors(function.node, f"function {function.domain}.{function.name}")


def external_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """The tensors of ``model`` whose data lives in external files."""
    for tensor, where in iter_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            yield tensor, where


def has_external_data(model: onnx.ModelProto) -> bool:
    """True if any tensor of ``model`` refers to external data."""
    return next(external_tensors(model), None) is not None


def _parse_size(tensor: TensorProto, key: str, value: str, where: str) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise UserError(
            f"external data of tensor {tensor.name!r} ({where}): {key} {value!r} "
            "is not a non-negative integer"
        )
    return int(text)


def _external_entries(tensor: TensorProto, where: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key not in KNOWN_EXTERNAL_KEYS:
            raise UserError(
                f"external data of tensor {tensor.name!r} ({where}): "
                f"key {entry.key!r} is not allowed"
            )
        if entry.key in entries:
            raise UserError(
                f"external data of tensor {tensor.name!r} ({where}): key {entry.key!r} repeated"
            )
        entries[entry.key] = entry.value
    return entries


def resolve_external_location(base_dir: Path, location: str, tensor: str, where: str) -> Path:
    """The file ``location`` names under ``base_dir``, refusing anything that could escape it.

    No path component may be ``..``, absolute, a drive, or a symlink; the file
    must be a regular file with a single hard link. Only ``lstat`` is used.
    """
    def fail(reason: str) -> UserError:
        return UserError(
            f"external data of tensor {tensor!r} ({where}): location {location!r} {reason}"
        )

    if not location or "\x00" in location:
        raise fail("is empty or contains NUL")
    normalised = location.replace("\\", "/")
    if normalised.startswith("/") or os.path.isabs(location) or (
        len(normalised) > 1 and normalised[1] == ":"
    ):
        raise fail("is absolute")
    parts = [p for p in normalised.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise fail("leaves the model folder")
    current = base_dir
    for index, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            raise fail("does not exist") from None
        except OSError as err:
            raise fail(f"cannot be inspected ({err.strerror})") from None
        if stat.S_ISLNK(info.st_mode):
            raise fail(f"goes through a symlink ({'/'.join(parts[:index + 1])})")
        last = index == len(parts) - 1
        if not last and not stat.S_ISDIR(info.st_mode):
            raise fail("is not a path through folders")
    if not stat.S_ISREG(info.st_mode):
        raise fail("is not a regular file")
    if info.st_nlink > 1:
        raise fail(f"is a file with {info.st_nlink} hard links")
    return current


def validate_external_data(model: onnx.ModelProto, base_dir: str | os.PathLike) -> None:
    """Check every external-data reference of ``model``; raise UserError naming the tensor.

    Nothing is read: only file metadata (``lstat``) is inspected.
    """
    base = Path(base_dir)
    for tensor, where in external_tensors(model):
        entries = _external_entries(tensor, where)
        if "location" not in entries:
            raise UserError(f"external data of tensor {tensor.name!r} ({where}): no location")
        path = resolve_external_location(base, entries["location"], tensor.name, where)
        offset = _parse_size(tensor, "offset", entries.get("offset", "0"), where)
        size = os.lstat(path).st_size
        if "length" in entries:
            length = _parse_size(tensor, "length", entries["length"], where)
        else:
            length = size - offset
        if offset > size or length < 0 or offset + length > size:
            raise UserError(
                f"external data of tensor {tensor.name!r} ({where}): offset {offset} + length "
                f"{length} is beyond the end of {entries['location']!r} ({size} bytes)"
            )


def external_files(model: onnx.ModelProto) -> list[str]:
    """The distinct ``location`` strings the model's external tensors use, in order."""
    seen: dict[str, None] = {}
    for tensor, _ in external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                seen.setdefault(entry.value, None)
    return list(seen)


# --- Writing -----------------------------------------------------------------


def _folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    folder = _folder_of(path)
    if not folder.is_dir():
        raise UserError(f"{path}: folder {folder} does not exist")
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path}: is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _default_mode())  # mkstemp makes 0600; a new file gets the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _default_mode() -> int:
    """0666 minus the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    """Copy bytes [start, end) between descriptors without holding more than one chunk."""
    position = start
    while position < end:
        count = min(_COPY_CHUNK, end - position)
        try:
            copied = os.copy_file_range(src, dst, count, position, position)
        except (AttributeError, OSError):
            copied = 0
        if copied <= 0:
            os.lseek(src, position, os.SEEK_SET)
            os.lseek(dst, position, os.SEEK_SET)
            chunk = os.read(src, count)
            if not chunk:
                raise UserError("external data file shrank while it was copied")
            copied = os.write(dst, chunk)
        position += copied


def _data_segments(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the non-hole parts of a file; the whole file if holes are unknown."""
    position = 0
    try:
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # only a hole is left
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, min(end, size)
            position = end
    except (AttributeError, OSError):
        if position < size:
            yield position, size


def copy_sparse_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically in chunks, keeping the holes of sparse files."""
    folder = _folder_of(target)
    fd_out, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd_out, _default_mode())
        fd_in = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            size = os.fstat(fd_in).st_size
            for start, end in _data_segments(fd_in, size):
                _copy_range(fd_in, fd_out, start, end)
            os.ftruncate(fd_out, size)
            os.fsync(fd_out)
        finally:
            os.close(fd_in)
        os.close(fd_out)
        fd_out = -1
        os.replace(tmp, target)
    except BaseException:
        if fd_out >= 0:
            os.close(fd_out)
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    source: LoadedModel | None = None,
    in_place: bool = False,
) -> None:
    """Serialise ``model`` to ``path`` atomically.

    If the model refers to external data, ``source_dir`` is the folder the
    references are relative to (the input model's folder). When the output
    folder is that folder, the references are kept as they are; otherwise
    each referenced file is copied to the same relative location next to the
    output (chunked, holes preserved) before the model file is written.
    """
    path = Path(path)
    source_dir = None if source is None else source.folder
    folder = _folder_of(path)
    if not folder.is_dir():
        raise UserError(f"{path}: folder {folder} does not exist")
    try:
        data = model.SerializeToString()
    except ValueError as err:  # protobuf refuses messages above 2 GiB
        raise UserError(f"{path}: model too large to serialise ({err})") from None
    locations = external_files(model) if may_have_external_data(data) else []
    if locations:
        if source_dir is None:
            raise UserError(f"{path}: model refers to external data but its folder is unknown")
        source = Path(source_dir)
        if not _same_folder(source, folder):
            for location in locations:
                src = resolve_external_location(source, location, "(file)", "copy")
                target = folder.joinpath(*[p for p in location.replace("\\", "/").split("/")
                                           if p not in ("", ".")])
                _prepare_target_folder(folder, target, location)
                copy_sparse_file(src, target)
    atomic_write_bytes(path, data)


def _prepare_target_folder(root: Path, target: Path, location: str) -> None:
    """Create the folders of ``target`` under ``root``, refusing symlinked components."""
    current = root
    for part in target.relative_to(root).parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise UserError(f"{current}: output data folder for {location!r} is a symlink")
        current.mkdir(exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        raise UserError(f"{target}: is a directory, cannot write external data {location!r}")
