"""Large models without their weights in memory: a *skeleton* read from the wire format.

The passes never need the bytes of large tensors, so :func:`read_skeleton`
walks the protobuf wire format of ``ModelProto`` → ``GraphProto`` →
``NodeProto`` → ``AttributeProto`` → ``TensorProto`` itself (through one
descriptor, in windows: nothing is mapped, pages it skips are never read) and
builds the bytes of the same model in which every large tensor keeps its
metadata (name, dims, data type, ``external_data``, ``data_location``, ...)
but not its data fields (``raw_data``, ``float_data``, ``int32_data``,
``string_data``, ``int64_data``, ``double_data``, ``uint64_data``). In their
place the tensor holds a *placeholder*: one unknown field (number
:data:`MARKER_FIELD`) with a magic string, a random token of this load and the
byte ranges of those data fields in the file. Protobuf parses the skeleton
like any model; the placeholder survives ``CopyFrom``, serialisation and the
onnx_ir round trip as an unknown field.

Saving (:func:`expand`) walks the serialised result the same way and writes,
in place of each placeholder of this load, the original data fields copied
from the source file (field order inside a message does not matter to
protobuf parsers), recomputing the lengths of the messages around it. The
passes never change a large tensor's contents (they keep, drop or add small
ones), so the copy is exact; a tensor whose metadata a pass changed (a
rewritten ``location``) keeps that change.

Where tensors are skeletonised: every place :mod:`.tensors` walks — graph
initializers, sparse initializers (values and indices), node attributes
(``t``, ``tensors``, ``sparse_tensor``, ``sparse_tensors``) whatever their
declared type, If/Loop/Scan bodies at any depth (``g``, ``graphs``),
model-local functions (nodes and attribute defaults) and
``training_info[].initialization`` / ``.algorithm``. A tensor is skeletonised
when its data fields hold more than :data:`LARGE_BYTES` bytes; a message is
only walked when it is larger than that (a smaller one cannot hold such a
tensor and is copied as it is).

The walk is strict where protobuf is (``upb``): tags and lengths of at most 5
bytes, lengths below 2 GiB, varints of at most 10 bytes, no field number 0,
wire types 0, 1, 2, 3 (groups, matched), 5; packed fixed-width data a
multiple of its width, packed varint data well formed (checked in chunks
without keeping it). What it does not interpret is copied unchanged, so the
final parse of the skeleton decides everything else exactly as it would for
the whole file. Unusual encodings fall back to copying: a tensor with more
than :data:`TENSOR_FIELD_LIMIT` fields (unpacked data), an attribute or
sparse tensor with a singular tensor field given twice (protobuf would merge
the two, interleaving their data); more than :data:`FIELD_LIMIT` fields in
all makes the caller read the whole file as before.
"""

from __future__ import annotations

import bisect
import os
import secrets
import stat
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from google.protobuf import unknown_fields
from onnx import (
    AttributeProto,
    FunctionProto,
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    TrainingInfoProto,
)

from ..errors import UserError
from . import _fs
from .tensors import walk_tensors

#: Tensors whose data fields hold more bytes than this become placeholders (the
#: passes read values only of constants of at most 64 elements, 1 KiB).
LARGE_BYTES = 4096
#: Files smaller than this are read whole (what a skeleton saves there is little, and the
#: walk costs about a microsecond per field).
MIN_FILE_BYTES = 16 << 20
#: Fields one tensor may have before it is copied instead (unpacked data is one field
#: per element).
TENSOR_FIELD_LIMIT = 4096
#: Fields walked in all before the reader gives up and the whole file is read.
FIELD_LIMIT = 4_000_000
#: The unknown field that carries a placeholder (the largest number protobuf allows).
MARKER_FIELD = (1 << 29) - 1
MAGIC = b"\x00spatialdrop-skeleton\x00"
_TOKEN_BYTES = 16
_MAX_DEPTH = 200
_WINDOW = 1 << 20
_CHUNK = 8 << 20
_MAX_LENGTH = (1 << 31) - 1

# Kinds of message on the way from a model to its tensors.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _SPARSE, _TENSOR = range(8)


def _number(message: type, name: str) -> int:
    return message.DESCRIPTOR.fields_by_name[name].number


#: For each kind, the fields (by number) that hold a message of a kind on the way.
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {_number(ModelProto, "graph"): _GRAPH,
             _number(ModelProto, "functions"): _FUNCTION,
             _number(ModelProto, "training_info"): _TRAINING},
    _GRAPH: {_number(GraphProto, "node"): _NODE,
             _number(GraphProto, "initializer"): _TENSOR,
             _number(GraphProto, "sparse_initializer"): _SPARSE},
    _NODE: {_number(NodeProto, "attribute"): _ATTRIBUTE},
    _ATTRIBUTE: {_number(AttributeProto, "t"): _TENSOR,
                 _number(AttributeProto, "g"): _GRAPH,
                 _number(AttributeProto, "tensors"): _TENSOR,
                 _number(AttributeProto, "graphs"): _GRAPH,
                 _number(AttributeProto, "sparse_tensor"): _SPARSE,
                 _number(AttributeProto, "sparse_tensors"): _SPARSE},
    _FUNCTION: {_number(FunctionProto, "node"): _NODE,
                _number(FunctionProto, "attribute_proto"): _ATTRIBUTE},
    _TRAINING: {_number(TrainingInfoProto, "initialization"): _GRAPH,
                _number(TrainingInfoProto, "algorithm"): _GRAPH},
    _SPARSE: {_number(SparseTensorProto, "values"): _TENSOR,
              _number(SparseTensorProto, "indices"): _TENSOR},
    _TENSOR: {},
}
#: Singular fields holding a tensor: given twice, protobuf merges the two tensors.
_SINGULAR: dict[int, frozenset[int]] = {
    _ATTRIBUTE: frozenset({_number(AttributeProto, "t"),
                           _number(AttributeProto, "sparse_tensor")}),
    _SPARSE: frozenset({_number(SparseTensorProto, "values"),
                        _number(SparseTensorProto, "indices")}),
}
#: TensorProto's data fields, with the width of a packed element (0: varints, None: bytes).
_DATA: dict[int, int | None] = {
    _number(TensorProto, "float_data"): 4,
    _number(TensorProto, "int32_data"): 0,
    _number(TensorProto, "string_data"): None,
    _number(TensorProto, "int64_data"): 0,
    _number(TensorProto, "raw_data"): None,
    _number(TensorProto, "double_data"): 8,
    _number(TensorProto, "uint64_data"): 0,
}


def varint_bytes(value: int) -> bytes:
    """``value`` as a minimal protobuf varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _padded_length(value: int) -> bytes:
    """A length as a 5-byte varint (protobuf accepts non-minimal lengths of 5 bytes)."""
    return bytes([(value >> shift) & 0x7F | 0x80 for shift in (0, 7, 14, 21)]
                 + [value >> 28])


_MARKER_TAG = varint_bytes(MARKER_FIELD << 3 | 2)


class WireError(Exception):
    """The bytes are not a valid protobuf encoding (``reason`` says why and where)."""


class _Copy(Exception):  # noqa: N818 - a signal, not an error
    """Copy the message being walked as it is (unusual encoding, or not worth it)."""


class _Exhausted(Exception):  # noqa: N818 - a signal, not an error
    """Too many fields: read the whole file instead."""


class _Shrunk(Exception):  # noqa: N818 - a signal, not an error
    """The file ended before its size said."""


class _Fields:
    """Field-by-field reading of protobuf wire data, through a window over a file or bytes.

    ``buf`` holds the bytes ``[base, base + len(buf))``; :meth:`_fill` moves the
    window (a file is read with ``pread``; bytes are one window).
    """

    def __init__(self, buf: bytes | memoryview, size: int, limit: float) -> None:
        self.buf = buf
        self.base = 0
        self.size = size
        self.fields = 0
        self.limit = limit  # fields this walk may read before giving up

    def _fill(self, pos: int) -> None:  # pragma: no cover - overridden for files
        raise AssertionError("bytes are one window")

    def _bad(self, reason: str, pos: int) -> WireError:
        return WireError(f"{reason} at byte {pos}")

    def _varint(self, pos: int, end: int, limit: int) -> tuple[int, int]:
        """The varint at ``pos`` (at most ``limit`` bytes, inside ``end``) and the next position."""
        rel = pos - self.base
        if rel < 0 or rel + limit > len(self.buf) and self.base + len(self.buf) < self.size:
            self._fill(pos)
            rel = 0
        buf = self.buf
        value = shift = 0
        for index in range(limit):
            if pos + index >= end:
                raise self._bad("truncated varint", pos)
            byte = buf[rel + index]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos + index + 1
            shift += 7
        raise self._bad(f"varint longer than {limit} bytes", pos)

    def _field(self, pos: int, end: int, depth: int) -> tuple[int, int, int, int]:
        """``(number, wire type, value start, field end)`` of the field at ``pos``."""
        self.fields += 1
        if self.fields > self.limit:
            raise _Exhausted
        tag, start = self._varint(pos, end, 5)
        number, wire = tag >> 3, tag & 7
        if number == 0 or tag > 0xFFFFFFFF:
            raise self._bad("invalid field number", pos)
        if wire == 2:
            length, start = self._varint(start, end, 5)
            if length > _MAX_LENGTH or length > end - start:
                raise self._bad("length beyond the end of its message", pos)
            return number, wire, start, start + length
        if wire == 0:
            return number, wire, start, self._varint(start, end, 10)[1]
        if wire in (1, 5):
            stop = start + (8 if wire == 1 else 4)
            if stop > end:
                raise self._bad("truncated fixed-width field", pos)
            return number, wire, start, stop
        if wire == 3:
            return number, wire, start, self._skip_group(start, end, number, depth)
        raise self._bad(f"wire type {wire} where a field starts", pos)

    def _fields(self, start: int, end: int, depth: int
                ) -> Iterator[tuple[int, int, int, int, int]]:
        """``(start, number, wire type, value start, end)`` of each field in ``[start, end)``."""
        pos = start
        while pos < end:
            # Fast path (most fields): a one-byte tag of a length-delimited field and a
            # one- or two-byte length, inside the window.
            buf = self.buf
            rel = pos - self.base
            tag = buf[rel] if 0 <= rel < len(buf) - 3 else 0x80
            if tag & 0x87 == 2 and tag >= 8 and self.fields < self.limit and (
                    buf[rel + 1] < 0x80 or buf[rel + 2] < 0x80):
                self.fields += 1
                if buf[rel + 1] < 0x80:
                    value = pos + 2
                    field_end = value + buf[rel + 1]
                else:
                    value = pos + 3
                    field_end = value + ((buf[rel + 1] & 0x7F) | buf[rel + 2] << 7)
                if field_end > end:
                    raise self._bad("length beyond the end of its message", pos)
                yield pos, tag >> 3, 2, value, field_end
            else:
                number, wire, value, field_end = self._field(pos, end, depth)
                yield pos, number, wire, value, field_end
            pos = field_end

    def _skip_group(self, pos: int, end: int, number: int, depth: int) -> int:
        """The position after the end-group tag that closes group ``number``."""
        open_groups = [number]
        while open_groups:
            if depth + len(open_groups) > _MAX_DEPTH:
                raise self._bad("groups nested too deeply", pos)
            self.fields += 1
            if self.fields > self.limit:
                raise _Exhausted
            tag, after = self._varint(pos, end, 5)
            inner, wire = tag >> 3, tag & 7
            if inner == 0 or tag > 0xFFFFFFFF:
                raise self._bad("invalid field number", pos)
            if wire == 4:
                if inner != open_groups.pop():
                    raise self._bad("end-group tag of another group", pos)
                pos = after
            elif wire == 3:
                open_groups.append(inner)
                pos = after
            else:
                _, _, _, pos = self._field(pos, end, depth + len(open_groups))
                self.fields -= 1
        return pos


# --- Reading --------------------------------------------------------------------------------


class _Reader(_Fields):
    """Builds the skeleton of the model in a file (see the module docstring)."""

    def __init__(self, fd: int, size: int, threshold: int, token: bytes) -> None:
        super().__init__(b"", size, FIELD_LIMIT)
        self.fd = fd
        self.threshold = threshold
        self.token = token
        self.out = bytearray()
        self.run = 0  # start of the bytes copied as they are and not yet in ``out``
        self.placeholders = 0

    def _pread(self, pos: int, count: int) -> bytes:
        data = os.pread(self.fd, count, pos)
        while len(data) < count:
            more = os.pread(self.fd, count - len(data), pos + len(data))
            if not more:
                raise _Shrunk
            data += more
        return data

    def _fill(self, pos: int) -> None:
        # Bytes still to copy that the old window held are read again by _flush (the field
        # whose header is being read began there, and it may be one that is not copied).
        self.buf = self._pread(pos, min(max(_WINDOW, 16), self.size - pos))  # >= a varint
        self.base = pos

    def _flush(self, upto: int) -> None:
        """Append the bytes ``[run, upto)`` of the file to the skeleton."""
        start = self.run
        if upto <= start:
            self.run = max(self.run, upto)
            return
        window_end = self.base + len(self.buf)
        if self.base <= start and upto <= window_end:
            self.out += memoryview(self.buf)[start - self.base: upto - self.base]
        else:
            while start < upto:
                count = min(_CHUNK, upto - start)
                self.out += self._pread(start, count)
                start += count
        self.run = upto

    def model(self) -> bytearray:
        self._message(0, self.size, _MODEL, 1)
        return self.out

    def _message(self, start: int, end: int, kind: int, depth: int) -> None:
        """Append the message ``[start, end)`` of ``kind``, large tensors as placeholders."""
        if depth > _MAX_DEPTH:
            raise self._bad("messages nested too deeply", start)
        children = _CHILDREN[kind]
        singular = _SINGULAR.get(kind, frozenset())
        seen: set[int] = set()
        threshold = self.threshold
        self.run = start
        for pos, number, wire, value, field_end in self._fields(start, end, depth):
            if wire == 2:
                if number in singular:
                    if number in seen:
                        raise _Copy
                    seen.add(number)
                child = children.get(number)
                if child is not None and field_end - value > threshold:
                    self._child(pos, number, value, field_end, child, depth + 1)
        self._flush(end)

    def _child(self, field_start: int, number: int, start: int, end: int, kind: int,
               depth: int) -> None:
        """Append one message-valued field, walked; copied as it is if the walk says so."""
        self._flush(field_start)
        mark = len(self.out)
        self.out += varint_bytes(number << 3 | 2)
        self.out += bytes(5)  # the length, written once known
        content = len(self.out)
        placeholders = self.placeholders
        try:
            if kind == _TENSOR:
                self._tensor(start, end, depth)
            else:
                self._message(start, end, kind, depth)
        except _Copy:
            del self.out[mark:]
            self.placeholders = placeholders
            self.run = field_start  # the whole field joins the bytes copied as they are
            return
        self.out[content - 5: content] = _padded_length(len(self.out) - content)
        self.run = end

    def _tensor(self, start: int, end: int, depth: int) -> None:
        """Append a TensorProto without its data fields, and a placeholder for them."""
        ranges: list[list[int]] = []
        self.run = start
        for fields, (pos, number, wire, value, field_end) in enumerate(
                self._fields(start, end, depth)):
            if fields >= TENSOR_FIELD_LIMIT:
                raise _Copy
            if number in _DATA and wire != 3:
                if wire == 2:
                    self._check_packed(number, value, field_end)
                self._flush(pos)
                if ranges and ranges[-1][1] == pos:
                    ranges[-1][1] = field_end
                else:
                    ranges.append([pos, field_end])
                self.run = field_end
        self._flush(end)
        if sum(stop - begin for begin, stop in ranges) <= self.threshold:
            raise _Copy  # not worth a placeholder
        payload = bytearray(MAGIC + self.token)
        payload += varint_bytes(len(ranges))
        for begin, stop in ranges:
            payload += varint_bytes(begin) + varint_bytes(stop - begin)
        self.out += _MARKER_TAG + varint_bytes(len(payload)) + payload
        self.placeholders += 1

    def _check_packed(self, number: int, start: int, end: int) -> None:
        """Refuse packed data protobuf would refuse, without keeping it."""
        width = _DATA[number]
        if width is None:
            return
        if width:
            if (end - start) % width:
                raise self._bad(f"packed data of {end - start} bytes is not a multiple of "
                                f"{width}", start)
            return
        carry = 0  # bytes of an unfinished varint
        pos = start
        while pos < end:
            count = min(_CHUNK, end - pos)
            chunk = np.frombuffer(self._pread(pos, count), dtype=np.uint8)
            stops = np.flatnonzero(chunk < 0x80)
            if stops.size == 0:
                carry += count
            else:
                longest = carry + int(stops[0]) + 1
                if stops.size > 1:
                    longest = max(longest, int(np.diff(stops).max()))
                if longest > 10:
                    raise self._bad("packed varint longer than 10 bytes", pos)
                carry = count - int(stops[-1]) - 1
            if carry >= 10:
                raise self._bad("packed varint longer than 10 bytes", pos)
            pos += count
        if carry:
            raise self._bad("truncated packed varint", end)


@dataclass(frozen=True)
class Skeleton:
    """The bytes of a model's skeleton and the token its placeholders carry."""

    data: bytearray
    token: bytes
    placeholders: int


def read_skeleton(fd: int, size: int, threshold: int | None = None) -> Skeleton | None:
    """The skeleton of the model in ``fd`` (``size`` bytes), or None: read the whole file.

    Raises :class:`WireError` for bytes protobuf would refuse, ``EOFError`` if
    the file is shorter than ``size``. ``threshold`` defaults to :data:`LARGE_BYTES`.
    """
    token = secrets.token_bytes(_TOKEN_BYTES)
    reader = _Reader(fd, size, LARGE_BYTES if threshold is None else threshold, token)
    try:
        data = reader.model()
    except (_Exhausted, _Copy):
        return None
    except _Shrunk:
        raise EOFError("the file ended before its size") from None
    return Skeleton(data, token, reader.placeholders)


# --- Placeholders in a parsed model -------------------------------------------------------


def _marker_payloads(tensor: TensorProto) -> Iterator[bytes]:
    for field in unknown_fields.UnknownFieldSet(tensor):
        if field.field_number == MARKER_FIELD and field.wire_type == 2 and \
                bytes(field.data[: len(MAGIC)]) == MAGIC:
            yield bytes(field.data)


def is_placeholder(tensor: TensorProto) -> bool:
    """True if ``tensor`` holds a skeleton placeholder (of any load) instead of its data."""
    return any(True for _ in _marker_payloads(tensor))


def placeholder_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """The tensors of ``model`` that hold a placeholder (of any load)."""
    for tensor, _ in walk_tensors(model):
        if is_placeholder(tensor):
            yield tensor


def holds_placeholders(model: ModelProto) -> bool:
    """True if some tensor of ``model`` lacks its data (a skeleton placeholder)."""
    return next(placeholder_tensors(model), None) is not None


# --- The source file, and writing placeholders back ----------------------------------------


class SkeletonSource:
    """The open model file a skeleton was read from (closed when this object goes).

    Placeholders name byte ranges of this very file; :meth:`check` refuses to
    use them once the file has changed (size, modification or change time).
    """

    def __init__(self, fd: int, info: os.stat_result, token: bytes, label: str) -> None:
        self.fd = fd
        self.token = token
        self.label = label
        self._state = self._stamp(info)
        self._closer = weakref.finalize(self, os.close, fd)

    @staticmethod
    def _stamp(info: os.stat_result) -> tuple[int, ...]:
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    def check(self) -> None:
        """Raise UserError if the file changed since the skeleton was read (or was closed)."""
        if not self._closer.alive:
            raise UserError(f"{self.label}: its weights are needed but the file was closed")
        try:
            info = os.fstat(self.fd)
        except OSError as err:
            raise UserError(f"{self.label}: cannot be read again ({err.strerror})") from None
        if not stat.S_ISREG(info.st_mode) or self._stamp(info) != self._state:
            raise UserError(f"{self.label}: changed while it was processed; its weights are "
                            "read from it when the result is written")

    def read(self, offset: int, length: int) -> bytearray:
        try:
            return _fs.read_exactly(self.fd, length, offset)
        except (OSError, EOFError) as err:
            raise UserError(f"{self.label}: cannot be read again "
                            f"({getattr(err, 'strerror', None) or 'it shrank'})") from None

    def copy_to(self, fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes at ``offset`` of the source to ``fd`` (at its position)."""
        try:
            _fs.copy_out(self.fd, fd, offset, length)
        except EOFError:
            raise UserError(f"{self.label}: shrank while its weights were copied") from None

    def close(self) -> None:
        self._closer()


Part = bytes | memoryview | tuple[int, int]


class _Expander(_Fields):
    """Serialised skeleton → parts: bytes, and (offset, length) ranges of the source file."""

    def __init__(self, data: bytes, token: bytes | None, label: str) -> None:
        super().__init__(memoryview(data), len(data), float("inf"))
        self.data = data
        self.token = token
        self.label = label
        self.hints = _positions(data, MAGIC)

    def _near(self, start: int, end: int) -> bool:
        index = bisect.bisect_left(self.hints, start)
        return index < len(self.hints) and self.hints[index] < end

    def expand(self, start: int, end: int, kind: int, depth: int) -> tuple[list[Part], int]:
        if not self._near(start, end):
            return [self.buf[start:end]], end - start
        if depth > _MAX_DEPTH:
            raise self._bad("messages nested too deeply", start)
        children = _CHILDREN[kind]
        parts: list[Part] = []
        total = 0
        run = start
        for pos, number, wire, value, field_end in self._fields(start, end, depth):
            if wire != 2:
                continue
            child = children.get(number)
            if child is not None and self._near(value, field_end):
                inner, length = self.expand(value, field_end, child, depth + 1)
                header = varint_bytes(number << 3 | 2) + varint_bytes(length)
                parts.append(self.buf[run:pos])
                parts.append(header)
                parts.extend(inner)
                total += (pos - run) + len(header) + length
                run = field_end
            elif kind == _TENSOR and number == MARKER_FIELD and \
                    bytes(self.buf[value: value + len(MAGIC)]) == MAGIC:
                parts.append(self.buf[run:pos])
                total += pos - run
                for offset, length in self._ranges(value, field_end):
                    parts.append((offset, length))
                    total += length
                run = field_end
        parts.append(self.buf[run:end])
        total += end - run
        return parts, total

    def _ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        pos = start + len(MAGIC)
        token = bytes(self.buf[pos: pos + _TOKEN_BYTES])
        if self.token is None or token != self.token:
            raise UserError(f"{self.label}: the model holds a tensor without its data (a "
                            "skeleton placeholder whose source file was not given)")
        pos += _TOKEN_BYTES
        count, pos = self._varint(pos, end, 10)
        ranges = []
        for _ in range(count):
            offset, pos = self._varint(pos, end, 10)
            length, pos = self._varint(pos, end, 10)
            ranges.append((offset, length))
        return ranges


def _positions(data: bytes, needle: bytes) -> list[int]:
    found = []
    index = data.find(needle)
    while index >= 0:
        found.append(index)
        index = data.find(needle, index + 1)
    return found


def expand(data: bytes, source: SkeletonSource | None, label: str) -> tuple[list[Part], int]:
    """The parts of the file ``data`` (a serialised model) stands for, and their total size.

    Every placeholder of ``source``'s load becomes the byte ranges it names;
    a placeholder of another load (or with no source) raises UserError.
    """
    expander = _Expander(data, None if source is None else source.token, label)
    if not expander.hints:
        return [data], len(data)
    try:
        return expander.expand(0, len(data), _MODEL, 1)
    except WireError as err:  # our own serialisation: only a bug gets here
        raise UserError(f"{label}: the model cannot be serialised ({err})") from None


def fill_placeholders(model: ModelProto, source: SkeletonSource) -> int:
    """Put the data of every placeholder of ``source``'s load back, in place; return the count.

    Afterwards ``model`` is what reading the whole file would have given (with
    the passes' changes).
    """
    source.check()
    count = 0
    for tensor in list(placeholder_tensors(model)):
        data = tensor.SerializeToString()
        expander = _Expander(data, source.token, source.label)
        parts, _ = expander.expand(0, len(data), _TENSOR, 1)
        whole = bytearray()
        for part in parts:
            whole += source.read(*part) if isinstance(part, tuple) else part
        tensor.ParseFromString(whole)
        count += 1
    source.check()  # not changed while it was read
    return count


__all__ = [
    "FIELD_LIMIT",
    "LARGE_BYTES",
    "MAGIC",
    "MARKER_FIELD",
    "MIN_FILE_BYTES",
    "TENSOR_FIELD_LIMIT",
    "Skeleton",
    "SkeletonSource",
    "WireError",
    "expand",
    "fill_placeholders",
    "holds_placeholders",
    "is_placeholder",
    "placeholder_tensors",
    "read_skeleton",
]

