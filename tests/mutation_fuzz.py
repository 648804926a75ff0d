"""Mutation fuzzing of the graph commands, run as a child of ``test_mutation_fuzz.py``.

``python mutation_fuzz.py SEED COUNT BUDGET_S WORKDIR [COMMANDS]`` mutates the shipped
models (``models/onnx``) and a few generated ones — byte flips and truncation,
and field-level mutations through protobuf: dims, attribute types, names,
opset and IR versions, ``external_data`` entries, node inputs, op types — and
runs ``inspect``, ``strip -q`` and ``rewrite -q`` (or the comma-separated
``COMMANDS``, ``inline`` and ``mc`` among them) on each through
``spatialdrop_onnx.cli.main`` in this process. It prints one JSON object:
``{"runs": n, "mutants": m, "violations": [...], "codes": {...}}``.

A violation is: a code outside the documented set, a traceback or more than
one error line, a temp file left in the output folder, or an output that fails
``onnx.checker.check_model(full_check=True)`` although the mutated input passed
it. Before each invocation the case is written to stderr, and SIGALRM ends a
hanging one, so a crash or hang kills this process with the culprit named last.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
from onnx import AttributeProto, TensorProto
from passes_helpers import random_mask

from spatialdrop_onnx.cli import main
from spatialdrop_onnx.isolation import isolated_checks, run_isolated

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = {0, 2, 3, 4, 5, 6}
#: Seconds one invocation may take before it counts as a hang.
HANG_SECONDS = 30

GENERATED = {
    "random_mask": f"""<ir_version: 8, opset_import: ["": 18]>
        g (float[N,3,4,5] x) => (float[N,3,4,5] y) <float k = {{0.75}}, float s = {{1.3333334}}> {{
            {random_mask()}
        }}""",
    "torch_dynamo": """<ir_version: 8, opset_import: ["": 17]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <int64[4] n = {2, 3, 1, 1}, float p = {0.8}> {
            z = ConstantOfShape(n)
            u = RandomUniformLike(z)
            keep = Less(u, p)
            m = Cast<to = 1>(keep)
            d = Div(m, p)
            y = Mul(x, d)
        }""",
    "opset7_mask": """<ir_version: 7, opset_import: ["": 7]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y, float[2,3,4,5] z) {
            d, m = Dropout<ratio: float = 0.3>(x)
            y = Relu(d)
            z = Add(m, x)
        }""",
    "subgraphs": """<ir_version: 8, opset_import: ["": 13, "local": 1]>
        g (float[2,3,4,5] x, bool c) => (float[2,3,4,5] y) <float r = {0.5}, bool t = {1}> {
            a = If(c) <then_branch = t1 () => (float[2,3,4,5] o1) { o1 = Dropout(x, r, t) },
                       else_branch = e1 () => (float[2,3,4,5] o2) { o2 = Identity(x) }>
            y = local.f(a)
        }
        <domain: "local", opset_import: ["": 13]>
        f (v) => (w) {
            q = Constant<value = float {0.25}>()
            k = Constant<value = bool {1}>()
            w, mk = Dropout(v, q, k)
        }""",
    # A dropout, then an RNN-like Loop of constant steps with tf2onnx's counter condition
    # (inline --unroll-loops writes it out).
    "counted_loop": """<ir_version: 8, opset_import: ["": 17]>
        g (float[N,3] x, bool training_mode) => (float[N,3] y, float[3,N,3] ys)
          <int64 M = {3}, int64 zero = {0}, bool run = {1}, float r = {0.25}> {
            d, dm = Dropout(x, r, training_mode)
            y, count, ys = Loop(M, run, d, zero)
              <body = step (int64 i, bool c, float[N,3] s, int64 k) =>
                           (bool c2, float[N,3] s2, int64 k2, float[N,3] o)
               <int64 one = {1}, int64 limit = {5}> {
                fi = Cast<to=1>(i)
                a = Add(s, fi)
                s2 = Tanh(a)
                o = Identity(s2)
                k2 = Add(k, one)
                c2 = Less(k2, limit)
            }>
        }""",
}


def seed_models() -> dict[str, onnx.ModelProto]:
    models = {path.stem: onnx.load(path) for path in sorted((ROOT / "models" / "onnx").glob(
        "*.onnx"))}
    for name, text in GENERATED.items():
        models[name] = onnx.parser.parse_model(text)
    # External data next to the model: an initializer the rules never need.
    external = onnx.parser.parse_model(GENERATED["random_mask"])
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[12])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "48")):
        weight.external_data.add(key=key, value=value)
    external.graph.initializer.append(weight)
    models["external"] = external
    return models


# --- Mutations -----------------------------------------------------------------------------


def _graphs(model: onnx.ModelProto) -> list[onnx.GraphProto]:
    found = []

    def walk(graph: onnx.GraphProto) -> None:
        found.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    walk(attr.g)
    walk(model.graph)
    return found


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    nodes = [n for g in _graphs(model) for n in g.node]
    nodes += [n for f in model.functions for n in f.node]
    return nodes


def _names(model: onnx.ModelProto) -> list[str]:
    names = [v for n in _nodes(model) for v in (*n.input, *n.output) if v]
    return names + [i.name for i in model.graph.initializer]


def _pick(items: list, rng: random.Random) -> object:
    return rng.choice(items) if items else None


NASTY_NAMES = ("", "x", "training_mode", "n\nspatialdrop-onnx: error: forged", "\x1b[2J",
               "../../etc/passwd", "a" * 300)


def mutate_dims(model: onnx.ModelProto, rng: random.Random) -> str:
    infos = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    dims = [d for i in infos for d in i.type.tensor_type.shape.dim]
    tensors = list(model.graph.initializer)
    value = rng.choice([-1, 0, 1, 7, 2**31 - 1, 2**40, -(2**62)])
    if dims and rng.random() < 0.6:
        rng.choice(dims).dim_value = value
        return f"dim value {value}"
    if tensors:
        tensor = rng.choice(tensors)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = value
        else:
            tensor.dims.append(value)
        return f"tensor dim {value}"
    return "no dims"


def mutate_attribute(model: onnx.ModelProto, rng: random.Random) -> str:
    attrs = [a for n in _nodes(model) for a in n.attribute]
    if not attrs:
        return "no attributes"
    attr = rng.choice(attrs)
    choice = rng.randrange(4)
    if choice == 0:
        attr.type = rng.choice([t for t in AttributeProto.AttributeType.values() if t])
        return f"attribute {attr.name} type {attr.type}"
    if choice == 1:
        attr.ints[:] = [rng.choice([-7, 0, 99, 2**62]) for _ in range(rng.randrange(4))]
        return f"attribute {attr.name} ints"
    if choice == 2:
        attr.f = rng.choice([float("nan"), float("inf"), -1.0, 2.5])
        return f"attribute {attr.name} float"
    attr.name = rng.choice(["seed", "shared_axes", "ratio", "to", "dtype", "shape"])
    return f"attribute renamed {attr.name}"


def mutate_name(model: onnx.ModelProto, rng: random.Random) -> str:
    node = _pick(_nodes(model), rng)
    if node is None:
        return "no nodes"
    field = rng.choice(["input", "output", "name"])
    new = rng.choice([*NASTY_NAMES, *_names(model)] or ["x"])
    if field == "name":
        node.name = new
    elif getattr(node, field):
        getattr(node, field)[rng.randrange(len(getattr(node, field)))] = new
    return f"{node.op_type}.{field} = {new!r}"


def mutate_inputs(model: onnx.ModelProto, rng: random.Random) -> str:
    node = _pick([n for n in _nodes(model) if n.input], rng)
    if node is None:
        return "no inputs"
    choice = rng.randrange(3)
    if choice == 0:
        del node.input[rng.randrange(len(node.input)):]
        return f"{node.op_type} inputs cut"
    if choice == 1:
        node.input.append(rng.choice(_names(model) or ["x"]))
        return f"{node.op_type} input added"
    items = list(node.input)
    rng.shuffle(items)
    node.input[:] = items
    return f"{node.op_type} inputs shuffled"


def mutate_opset(model: onnx.ModelProto, rng: random.Random) -> str:
    choice = rng.randrange(4)
    if choice == 0 and model.opset_import:
        entry = rng.choice(model.opset_import)
        entry.version = rng.choice([1, 6, 7, 9, 12, 15, 22, 99])
        return f"opset {entry.domain or '(default)'}:{entry.version}"
    if choice == 1:
        model.opset_import.add(domain=rng.choice(["", "ai.onnx", "org.spatialdrop"]),
                               version=rng.choice([1, 2, 13]))
        return "opset import added"
    if choice == 2 and model.opset_import:
        del model.opset_import[rng.randrange(len(model.opset_import))]
        return "opset import removed"
    model.ir_version = rng.choice([0, 3, 7, 10, 12, 99])
    return f"ir_version {model.ir_version}"


def mutate_external(model: onnx.ModelProto, rng: random.Random) -> str:
    tensors = list(model.graph.initializer) or [model.graph.initializer.add(
        name="extra", data_type=TensorProto.FLOAT, dims=[1], float_data=[1.0])]
    tensor = rng.choice(tensors)
    tensor.data_location = TensorProto.EXTERNAL
    key = rng.choice(["location", "offset", "length", "checksum", "basepath"])
    value = rng.choice(["w.bin", "../w.bin", "/etc/passwd", "", "-1", "99999999999",
                        "0x10", "w.bin\x00", "."])
    tensor.external_data.add(key=key, value=value)
    return f"external_data {key}={value!r}"


def mutate_op_type(model: onnx.ModelProto, rng: random.Random) -> str:
    node = _pick(_nodes(model), rng)
    if node is None:
        return "no nodes"
    node.op_type, node.domain = rng.choice([
        ("Dropout", ""), ("SpatialDropout", "org.spatialdrop"), ("RandomUniformLike", ""),
        ("Loop", ""), ("If", ""), ("Identity", ""), ("Unknown", "com.example")])
    return f"op type {node.op_type}"


FIELD_MUTATIONS = (mutate_dims, mutate_attribute, mutate_name, mutate_inputs, mutate_opset,
                   mutate_external, mutate_op_type)


def mutant(model: onnx.ModelProto, rng: random.Random) -> tuple[str, bytes]:
    """A mutated serialization of ``model`` and what was done to it."""
    if rng.random() < 0.25:
        data = bytearray(model.SerializeToString())
        if rng.random() < 0.2:
            return "truncated", bytes(data[: rng.randrange(len(data))])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return "bytes flipped", bytes(data)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    done = [rng.choice(FIELD_MUTATIONS)(copy, rng) for _ in range(rng.randint(1, 2))]
    return "; ".join(done), copy.SerializeToString()


# --- Running --------------------------------------------------------------------------------


def _check(data: bytes) -> str:
    try:
        onnx.checker.check_model(onnx.ModelProto.FromString(data), full_check=True)
    except Exception as err:  # noqa: BLE001 - any complaint means "invalid"
        return type(err).__name__
    return ""


def passes_checker(data: bytes) -> bool:
    """Full check in a forked child (the checker itself can abort on a mutant)."""
    try:
        with isolated_checks():
            return run_isolated(_check, data, what="checking") == ""
    except Exception:  # noqa: BLE001 - a crash of the checker: not valid
        return False


def _alarm(signum: int, frame: object) -> None:
    os.write(2, b"HANG\n")
    os._exit(99)


#: The commands a mutant goes through (a sixth argument picks others), with their options.
COMMANDS = {"inspect": [], "strip": [], "rewrite": [], "inline": ["--unroll-loops"],
            "mc": ["--samples", "2"]}
DEFAULT_COMMANDS = ("inspect", "strip", "rewrite")


def run(seed: int, count: int, budget: float, workdir: Path,
        commands: tuple[str, ...] = DEFAULT_COMMANDS) -> dict:
    rng = random.Random(seed)
    models = seed_models()
    names = sorted(models)
    (workdir / "w.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    out_dir = workdir / "out"
    out_dir.mkdir(exist_ok=True)
    signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    violations, codes, runs, made = [], Counter(), 0, 0
    while made < count and time.monotonic() - start < budget:
        source = names[made % len(names)]
        what, data = mutant(models[source], rng)
        made += 1
        path = workdir / "m.onnx"
        path.write_bytes(data)
        valid_in = passes_checker(data)
        for command in commands:
            output = out_dir / "o.onnx"
            argv = [command, str(path), "-q", *COMMANDS[command]] + (
                [] if command == "inspect" else ["-o", str(output)])
            case = f"#{made} {source}: {what} | {command}"
            os.write(2, (case + "\n").encode("utf-8", "backslashreplace"))
            out, err = io.StringIO(), io.StringIO()
            signal.alarm(HANG_SECONDS)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = int(main(argv))
                except BaseException as exc:  # noqa: BLE001 - an escape is a violation
                    code = f"raised {type(exc).__name__}: {exc}"
            signal.alarm(0)
            runs += 1
            codes[str(code)] += 1
            problems = []
            if code not in DOCUMENTED:
                problems.append(f"code {code}")
            if "Traceback" in err.getvalue() + out.getvalue():
                problems.append("traceback")
            if len(err.getvalue().splitlines()) > 1:
                problems.append(f"{len(err.getvalue().splitlines())} error lines")
            leftovers = [p.name for p in out_dir.iterdir() if p.name.startswith(".spatialdrop-")]
            if leftovers:
                problems.append(f"temp files left behind: {leftovers}")
            if valid_in and code in (0, 5) and command != "inspect" and \
                    not passes_checker(output.read_bytes()):
                problems.append("valid input, invalid output")
            for extra in out_dir.iterdir():  # the output and the data files it owns
                extra.unlink()
            if problems:
                kept = workdir / f"violation-{len(violations)}.onnx"  # to reproduce it
                kept.write_bytes(data)
                violations.append({"case": case, "problems": problems, "model": str(kept),
                                   "err": err.getvalue()[-500:]})
    return {"runs": runs, "mutants": made, "seconds": round(time.monotonic() - start, 1),
            "violations": violations, "codes": dict(codes)}


if __name__ == "__main__":
    seed_, count_, budget_, workdir_ = sys.argv[1:5]
    chosen = tuple(sys.argv[5].split(",")) if len(sys.argv) > 5 else DEFAULT_COMMANDS
    result = run(int(seed_), int(count_), float(budget_), Path(workdir_), chosen)
    sys.stdout.write(json.dumps(result))
