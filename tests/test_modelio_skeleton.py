"""Skeleton loading (modelio.skeleton): the same model as onnx reads, without the weights.

With the thresholds lowered (every message walked, every tensor with data a
placeholder, a window of a few bytes), a skeleton with its placeholders filled
equals what ``onnx.ModelProto.FromString`` reads, and a save through the
placeholders writes a file onnx reads as the same model: on the shipped models
and on random models encoded in unusual but valid ways (fields in any order,
packed data split or unpacked, non-minimal tags and lengths, singular messages
given twice). Hostile wire data gives the same verdict as the whole-file path,
as one line, and nothing is read beyond the file. External data is validated
on placeholders exactly as on whole tensors.
"""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from modelio_cases import PLACES, W, external, place
from onnx import TensorProto
from onnx import helper as oh

from spatialdrop_onnx import modelio
from spatialdrop_onnx.errors import RefusedError, UserError
from spatialdrop_onnx.modelio import skeleton

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "models" / "onnx").glob("*.onnx"))


@pytest.fixture
def everything_skeletonised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file read as a skeleton, every tensor with data a placeholder."""
    monkeypatch.setattr(skeleton, "MIN_FILE_BYTES", 0)
    monkeypatch.setattr(skeleton, "LARGE_BYTES", 0)


def _skeleton(path: Path) -> modelio.LoadedModel:
    loaded = modelio.load_model(path, skeleton=True)
    assert loaded.skeleton is not None
    return loaded


def _filled(loaded: modelio.LoadedModel) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(loaded.model)
    if loaded.skeleton is not None:  # None: no placeholder was made
        modelio.fill_placeholders(copy, loaded.skeleton)
    assert not modelio.holds_placeholders(copy)
    return copy


def _check_round_trips(path: Path, out: Path) -> int:
    """Skeleton of ``path`` filled, and saved, equal onnx's reading; returns the placeholders."""
    reference = onnx.ModelProto.FromString(path.read_bytes())
    loaded = modelio.load_model(path, skeleton=True)
    count = sum(1 for _ in skeleton.placeholder_tensors(loaded.model))
    assert _filled(loaded) == reference
    modelio.save_model(loaded.model, out, source=loaded)
    assert onnx.ModelProto.FromString(out.read_bytes()) == reference
    return count


# --- Unusual but valid encodings --------------------------------------------------------------

_UNPACKED = {FieldDescriptor.TYPE_FLOAT: (5, "<f"), FieldDescriptor.TYPE_DOUBLE: (1, "<d"),
             FieldDescriptor.TYPE_INT32: (0, None), FieldDescriptor.TYPE_INT64: (0, None),
             FieldDescriptor.TYPE_UINT64: (0, None)}


def _varint(value: int, pad: int = 0) -> bytes:
    """A varint with ``pad`` extra (non-minimal) continuation bytes."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append(value & 0x7F)
        value >>= 7
        if not value:
            break
        out[-1] |= 0x80
    for _ in range(pad):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def _header(number: int, length: int, rng: random.Random) -> bytes:
    tag = _varint(number << 3 | 2)
    size = _varint(length)
    return (_varint(number << 3 | 2, rng.randrange(5 - len(tag) + 1)) if rng.random() < 0.2
            else tag) + (_varint(length, rng.randrange(5 - len(size) + 1))
                         if rng.random() < 0.2 else size)


def _split(message: Message, rng: random.Random) -> tuple[Message, Message]:
    """Two messages that merge into ``message`` (repeated fields split, others on one side)."""
    first, second = type(message)(), type(message)()
    for field, value in message.ListFields():
        if field.is_repeated:
            cut = rng.randrange(len(value) + 1)
            getattr(first, field.name).extend(value[:cut])
            getattr(second, field.name).extend(value[cut:])
        else:
            side = first if rng.random() < 0.5 else second
            if field.message_type is not None:
                getattr(side, field.name).CopyFrom(value)
            else:
                setattr(side, field.name, value)
    return first, second


def encode(message: Message, rng: random.Random) -> bytes:
    """``message`` serialised in an unusual but valid way (see the module docstring)."""
    sequences = []
    for field, value in message.ListFields():
        pieces = []
        repeated = field.is_repeated
        if field.message_type is not None:
            items = list(value) if repeated else [value]
            if not repeated and rng.random() < 0.15:
                items = list(_split(value, rng))  # a singular message given twice
            for item in items:
                body = encode(item, rng)
                pieces.append(_header(field.number, len(body), rng) + body)
        elif repeated and value and field.type in _UNPACKED:
            items = list(value)
            wire, fmt = _UNPACKED[field.type]
            while items:
                cut = rng.randrange(1, len(items) + 1)
                chunk, items = items[:cut], items[cut:]
                if rng.random() < 0.3:
                    for item in chunk:
                        packed = struct.pack(fmt, item) if fmt else _varint(item)
                        pieces.append(_varint(field.number << 3 | wire) + packed)
                else:
                    body = b"".join(struct.pack(fmt, item) if fmt else _varint(item)
                                    for item in chunk)
                    pieces.append(_header(field.number, len(body), rng) + body)
        else:
            single = type(message)()
            if repeated:
                getattr(single, field.name).extend(value)
            else:
                setattr(single, field.name, value)
            pieces.append(single.SerializeToString())
        sequences.append(pieces)
    out = []
    while sequences:  # interleave the fields, each in its own order
        pick = rng.randrange(len(sequences))
        out.append(sequences[pick].pop(0))
        if not sequences[pick]:
            sequences.pop(pick)
    return b"".join(out)


def _tensor(rng: random.Random, name: str) -> TensorProto:
    """A tensor of a random type, size and storage (raw_data or the typed field)."""
    count = rng.choice([1, 3, 40, 600])
    kind = rng.choice(["float", "double", "int64", "int32", "uint64", "string", "bool"])
    generator = np.random.default_rng(rng.randrange(1 << 30))
    if kind == "string":
        return oh.make_tensor(name, TensorProto.STRING, [count],
                              [bytes(generator.integers(0, 256, rng.randrange(9),
                                                        dtype=np.uint8)) for _ in range(count)])
    arrays = {
        "float": lambda: generator.standard_normal(count).astype(np.float32),
        "double": lambda: generator.standard_normal(count),
        "int64": lambda: generator.integers(-(1 << 62), 1 << 62, count),
        "int32": lambda: generator.integers(-(1 << 30), 1 << 30, count).astype(np.int32),
        "uint64": lambda: generator.integers(0, 1 << 63, count).astype(np.uint64),
        "bool": lambda: generator.integers(0, 2, count).astype(bool),
    }
    array = arrays[kind]()
    if rng.random() < 0.5:
        return onnx.numpy_helper.from_array(array, name)  # raw_data
    elem = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    return oh.make_tensor(name, elem, [count], array.tolist())


def random_model(seed: int) -> onnx.ModelProto:
    """A model with random tensors in every kind of place (it only needs to load)."""
    rng = random.Random(seed)
    places = list(PLACES)
    model = place(_tensor(rng, "t0"), rng.choice(places))
    for index in range(1, rng.randrange(2, 6)):
        extra = place(_tensor(rng, f"t{index}"), rng.choice(places))
        model.graph.initializer.extend(extra.graph.initializer)
        model.graph.sparse_initializer.extend(extra.graph.sparse_initializer)
        nodes = [n for n in extra.graph.node if n.op_type != "Identity"] + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.functions.extend(f for f in extra.functions
                               if f.name not in {g.name for g in model.functions})
        if not model.training_info:
            model.training_info.extend(extra.training_info)
    model.graph.doc_string = "d" * rng.randrange(3000)
    return model


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_models_read_and_written_through_the_skeleton(
        everything_skeletonised: None, path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skeleton, "_WINDOW", 61)  # the window moves all the time
    assert _check_round_trips(path, tmp_path / "out.onnx") > 0


def test_random_models_in_unusual_encodings(everything_skeletonised: None, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    placeholders = 0
    for seed in range(60):
        rng = random.Random(seed)
        monkeypatch.setattr(skeleton, "LARGE_BYTES", rng.choice([0, 0, 16, 200]))
        monkeypatch.setattr(skeleton, "_WINDOW", rng.choice([7, 64, 1 << 20]))
        path = tmp_path / f"m{seed}.onnx"
        path.write_bytes(encode(random_model(seed), rng))
        placeholders += _check_round_trips(path, tmp_path / f"out{seed}.onnx")
    assert placeholders > 100


def test_every_place_a_large_tensor_sits_is_skeletonised(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skeleton, "MIN_FILE_BYTES", 0)  # default LARGE_BYTES
    big = onnx.numpy_helper.from_array(np.arange(4096, dtype=np.float32), "big")
    small = onnx.numpy_helper.from_array(np.arange(512, dtype=np.float32), "small")
    for where in PLACES:
        model = place(big, where)
        model.graph.initializer.append(small)
        path = tmp_path / f"{where}.onnx"
        path.write_bytes(model.SerializeToString())
        loaded = _skeleton(path)
        found = [(t.name, list(t.dims)) for t in skeleton.placeholder_tensors(loaded.model)]
        assert found == [("big", [4096])], where  # metadata kept, only the large one
        assert loaded.model.ByteSize() < 4096, where
        assert _filled(loaded) == model, where


# --- External data is validated on placeholders ----------------------------------------------


def _with_data(tensor: TensorProto) -> TensorProto:
    """``tensor`` also carrying 8 KiB of raw_data: a placeholder when read as a skeleton."""
    tensor.raw_data = bytes(8192)
    return tensor


@pytest.mark.parametrize("where", PLACES)
def test_placeholders_keep_their_external_references(where: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skeleton, "MIN_FILE_BYTES", 0)
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(place(_with_data(external("w", "../secret.bin")), where)
                     .SerializeToString())
    with pytest.raises(RefusedError) as caught:
        modelio.load_model(path, skeleton=True)
    assert "'w'" in str(caught.value) and "leaves the model folder" in str(caught.value)
    assert PLACES[where] in str(caught.value)


def test_non_minimal_data_location_of_a_placeholder_is_validated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 11 through the skeleton: ``70 81 00`` after 8 KiB of raw_data."""
    monkeypatch.setattr(skeleton, "MIN_FILE_BYTES", 0)
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    tensor = _with_data(external("stolen", "../secret.bin"))
    tensor.ClearField("data_location")
    for data_location in (b"\x70\x81\x00", b"\x70\x85\x00", b"\x72\x01\x01"):
        model = place(external("unused", "w.bin"), "graph")
        del model.graph.initializer[:]
        body = tensor.SerializeToString() + data_location
        graph = model.graph.SerializeToString() + b"\x2a" + _varint(len(body)) + body
        model.ClearField("graph")
        path = tmp_path / "m" / "model.onnx"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(model.SerializeToString() + b"\x3a" + _varint(len(graph)) + graph)
        with pytest.raises(RefusedError) as caught:
            modelio.load_model(path, skeleton=True)
        assert "'stolen'" in str(caught.value)
        expected = ("leaves the model folder" if data_location == b"\x70\x81\x00"
                    else "data_location has a value this tool does not know")
        assert expected in str(caught.value)


# --- Hostile wire data ------------------------------------------------------------------------


def _big_tensor_model() -> bytes:
    model = place(onnx.numpy_helper.from_array(np.arange(64, dtype=np.int64), "w"), "graph")
    model.graph.node.insert(0, oh.make_node(
        "Constant", [], ["c"], value=onnx.numpy_helper.from_array(
            np.arange(16, dtype=np.float32), "c")))
    return model.SerializeToString()


def _tensor_model(tensor_body: bytes) -> bytes:
    """A model whose one initializer has exactly these bytes."""
    model = place(external("unused", "w.bin"), "graph")
    del model.graph.initializer[:]
    graph = model.graph.SerializeToString() + b"\x2a" + _varint(len(tensor_body)) + tensor_body
    model.ClearField("graph")
    return model.SerializeToString() + b"\x3a" + _varint(len(graph)) + graph


def _nested(levels: int) -> bytes:
    graph = onnx.GraphProto(name="g")
    for _ in range(levels):
        outer = onnx.GraphProto(name="g")
        attr = outer.node.add(op_type="If").attribute.add(name="then_branch", type=5)
        attr.g.CopyFrom(graph)
        graph = outer
    model = oh.make_model(oh.make_graph([], "m", [], []), opset_imports=[oh.make_opsetid("", 18)])
    model.graph.node.add(op_type="If").attribute.add(name="then_branch", type=5).g.CopyFrom(graph)
    return model.SerializeToString()


_META = TensorProto(name="w", data_type=TensorProto.INT64, dims=[4]).SerializeToString()
HOSTILE = {
    "truncated_tag": _tensor_model(_META + b"\x8a"),
    "truncated_length": _tensor_model(_META + b"\x4a\x80"),
    "length_beyond_message": _tensor_model(_META + b"\x4a\x7f" + bytes(8)),
    "length_beyond_file": _big_tensor_model()[:-1] + b"\x0a\xff\xff\xff\x07",
    "six_byte_length": _tensor_model(_META + b"\x4a\x80\x80\x80\x80\x80\x00"),
    "eleven_byte_varint": _tensor_model(_META + b"\x08" + b"\xff" * 10 + b"\x01"),
    "six_byte_tag": _tensor_model(_META + b"\xca\x80\x80\x80\x80\x00\x00"),
    "field_zero": _tensor_model(_META + b"\x02\x00"),
    "wire_type_6": _tensor_model(_META + b"\x4e"),
    "wire_type_7": _tensor_model(_META + b"\x4f"),
    "end_group_alone": _tensor_model(_META + b"\x4c"),
    "mismatched_group": _tensor_model(_META + b"\xa3\x06\x08\x01\xac\x06"),
    "packed_float_not_4": _tensor_model(_META + b"\x22\x07" + bytes(7)),
    "packed_double_not_8": _tensor_model(_META + b"\x52\x0c" + bytes(12)),
    "packed_varint_open": _tensor_model(_META + b"\x3a\x03\x01\x02\x83"),
    "packed_varint_11_bytes": _tensor_model(_META + b"\x3a\x0b" + b"\xff" * 10 + b"\x01"),
    "deep_nesting": _nested(60),
    "deep_groups_as_raw_data": _tensor_model(_META + b"\x4b" * 101 + b"\x4c" * 101),
    "text": b"this is not a model\n" * 10,
}
VALID_ODDITIES = {
    "unknown_group": _tensor_model(_META + b"\xa3\x06\x08\x01\xa4\x06"),
    "five_byte_length": _tensor_model(_META + b"\x4a\x80\x80\x80\x80\x00"),
    "packed_varint_10_bytes": _tensor_model(_META + b"\x3a\x0a" + b"\xff" * 9 + b"\x01"),
    "raw_data_as_varint": _tensor_model(_META + b"\x48\x05"),
    "raw_data_as_group": _tensor_model(_META + b"\x4b\x08\x01\x4c" + b"\x4a\x02ab"),
    "nesting_20": _nested(20),
}


def _verdict(path: Path, **options: bool) -> onnx.ModelProto | str:
    try:
        loaded = modelio.load_model(path, **options)
    except UserError as err:
        message = str(err)
        assert "\n" not in message and str(path) in message, message
        return "refused"
    return _filled(loaded)


@pytest.fixture
def bounded_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every ``os.pread`` as (offset, count, file size); asserts nothing beyond the file."""
    reads: list[tuple[int, int, int]] = []
    real = os.pread

    def pread(fd: int, count: int, offset: int) -> bytes:
        size = os.fstat(fd).st_size
        assert 0 <= offset and 0 <= count and offset + count <= size, (offset, count, size)
        reads.append((offset, count, size))
        return real(fd, count, offset)

    monkeypatch.setattr(os, "pread", pread)
    return reads


@pytest.mark.parametrize("case", [*HOSTILE, *VALID_ODDITIES])
def test_hostile_wire_data_same_verdict_as_onnx(case: str, tmp_path: Path,
                                                everything_skeletonised: None,
                                                bounded_reads: list) -> None:
    data = {**HOSTILE, **VALID_ODDITIES}[case]
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    whole = _verdict(path)
    assert _verdict(path, skeleton=True) == whole
    assert (whole == "refused") == (case in HOSTILE)
    assert bounded_reads


def test_mutated_models_same_verdict_as_onnx(tmp_path: Path, everything_skeletonised: None,
                                             bounded_reads: list) -> None:
    """Byte flips, truncations and insertions: the skeleton path agrees with the whole file."""
    rng = random.Random(7)
    base = encode(random_model(3), rng)
    outcomes = set()
    for index in range(300):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            spot = rng.randrange(len(data))
            action = rng.randrange(4)
            if action == 0:
                data[spot] = rng.randrange(256)
            elif action == 1:
                data[spot] = rng.choice([0x80, 0xFF, 0x00, 0x7F])
            elif action == 2:
                del data[spot:]
                if not data:
                    data = bytearray(b"\x0a")
            else:
                data[spot:spot] = bytes([rng.randrange(256)])
        path = tmp_path / f"m{index}.onnx"
        path.write_bytes(bytes(data))
        whole = _verdict(path)
        assert _verdict(path, skeleton=True) == whole, index
        outcomes.add(whole == "refused")
    assert outcomes == {True, False}  # both kinds of outcome were exercised


def test_too_many_fields_falls_back_to_reading_the_whole_file(
        tmp_path: Path, everything_skeletonised: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skeleton, "FIELD_LIMIT", 5)
    path = tmp_path / "model.onnx"
    path.write_bytes(_big_tensor_model())
    loaded = modelio.load_model(path, skeleton=True)
    assert loaded.skeleton is None and not modelio.holds_placeholders(loaded.model)
    assert loaded.model == onnx.load(path)


# --- Writing placeholders back ----------------------------------------------------------------


def test_saving_placeholders_needs_their_unchanged_source(tmp_path: Path,
                                                          everything_skeletonised: None) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_big_tensor_model())
    loaded = _skeleton(path)
    out = tmp_path / "out.onnx"
    with pytest.raises(UserError, match="placeholder whose source file was not given"):
        modelio.save_model(loaded.model, out)
    other = _skeleton(path)  # another load: another token
    with pytest.raises(UserError, match="placeholder whose source file was not given"):
        modelio.save_model(loaded.model, out, source=other)
    with open(path, "ab") as handle:  # the input changes after loading
        handle.write(b"\x00")
    with pytest.raises(UserError, match="changed while it was processed"):
        modelio.save_model(loaded.model, out, source=loaded)
    with pytest.raises(UserError, match="changed while it was processed"):
        modelio.fill_placeholders(loaded.model, loaded.skeleton)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # nothing written


@pytest.mark.parametrize("fault", ["interrupt", "disk_full"])
def test_a_fault_while_copying_weights_leaves_nothing(fault: str, tmp_path: Path,
                                                      everything_skeletonised: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_big_tensor_model())
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    loaded = _skeleton(path)
    real = skeleton._fs.copy_out
    calls = []

    def failing(*args: int) -> None:
        calls.append(args)
        if len(calls) == 2:
            if fault == "interrupt":
                raise KeyboardInterrupt
            raise OSError(28, "No space left on device")
        real(*args)

    monkeypatch.setattr(skeleton._fs, "copy_out", failing)
    expected = KeyboardInterrupt if fault == "interrupt" else UserError
    with pytest.raises(expected) as caught:
        modelio.save_model(loaded.model, out, source=loaded)
    if fault == "disk_full":
        assert str(caught.value) == f"{out}: cannot be written (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx"]
    assert out.read_bytes() == b"previous"
    monkeypatch.setattr(skeleton._fs, "copy_out", real)
    modelio.save_model(loaded.model, path, source=loaded, in_place=True)  # from the old inode
    assert onnx.load(path) == onnx.ModelProto.FromString(_big_tensor_model())
