#!/usr/bin/env python3
"""Seeded mutation fuzzer for the bnrewrite CLI contract.

    python tools/fuzz.py --iterations 3000 --seed 1                # verify every 10th case
    python tools/fuzz.py --iterations 300 --seed 2 --verify        # verify every case
    python tools/fuzz.py --iterations 1000 --verify --gentle       # mutations TF can mostly still run
    python tools/fuzz.py --iterations 500 --no-verify --realgraphs # never verify; real graphs as seeds too
    python tools/fuzz.py --replay fixtures/fuzz/crash_X.json       # rerun one saved case

Each case mutates one seed graph (fixtures/*.pb, *.pbtxt, and with --realgraphs
../shared/realgraphs/*) with 1-4 mutations from MUTATIONS (bytes, protobuf or text
level), then runs `audit IN`, `rewrite IN -o OUT --no-verify` and, with --verify or every
--verify-every-th case, `rewrite IN -o OUT` (TensorFlow). Commands run in-process
(bnrewrite.cli.main) in --workers child processes (TensorFlow imported once per worker)
capped by RLIMIT_AS (--mem-gib) and a --timeout per command. Allowed: exit 0 (rewrite:
OUT written), or exit 2 / exit 1 with exactly one `bnrewrite: ` line on stderr and no
OUT; never an exception, another exit code, a hang, a partial OUT or a `.OUT.*.tmp`.
Exit 1 (verification failed on a graph TensorFlow runs) is also recorded as a finding.
Untrusted graphs (m_side_effect adds a WriteFile, ReadFile, PyFunc or PrintV2 the outputs
depend on): a verified rewrite must refuse them (exit 0 is `unsafe-ran`), and the file the
WriteFile names (WRITTEN) must never appear (`graph-wrote-file`); a run past the verified
rewrite's own time limit (`--timeout 20`, a third of the fuzzer's default 60 s per command)
or memory limit must end in exit 2, not a hang.
Every distinct signature is minimised (greedy deletion of nodes, attrs and inputs, or of
byte ranges) and saved to --out (default fixtures/fuzz) as crash_<sig>.pb + .json;
tests/test_fuzz_regressions.py replays them. Case i depends only on (--seed, i).
"""
from __future__ import annotations

import argparse, copy, faulthandler, json, math, multiprocessing, os, random, re, resource, shutil
import signal, sys, tempfile, threading, time, traceback
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tensorboard.compat.proto import graph_pb2

ROOT = Path(__file__).resolve().parents[1]
FIXTURES, REALGRAPHS = ROOT / "fixtures", ROOT.parent / "shared" / "realgraphs"
BN_OPS = ["FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "BatchNormWithGlobalNormalization",
          "Conv2D", "MatMul", "Add", "AddV2", "Mul", "Rsqrt", "Sub", "Identity"]
# float, double, int32, complex64, int64, bool, bfloat16, half, resource, float_ref, invalid, unknown
DTYPES = [1, 2, 3, 8, 9, 10, 14, 19, 20, 101, 0, 999]
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -1.0, -1e-3, 1e30, 1e-40, 65504.0, 7e4, 1e-7, 1e-5, 0.1, 10.0]
HUGE = [10**12, 2**31, 2**28, 2**27 + 1, 2**62, -1, -7, 2**63 - 1]
COMMANDS = {"audit": ["audit", "IN"], "rewrite": ["rewrite", "IN", "-o", "OUT", "--no-verify"],
            "verify": ["rewrite", "IN", "-o", "OUT", "--timeout", "20"]}  # a third of the default --timeout
# Side-effect ops m_side_effect adds: (op, inputs as Const strings, attrs). Judged by the
# fuzzer's own list and walk (runs_side_effect), not by bnrewrite.safety, which is under test.
WRITTEN = Path(tempfile.gettempdir()) / "bnfuzz_graph_wrote_this.txt"
SIDE_EFFECTS = [("WriteFile", [str(WRITTEN), "written by a fuzzed graph"], {}),
                ("ReadFile", ["/etc/hostname"], {}),
                ("PyFunc", [], {"token": "pyfunc_0"}),
                ("PrintV2", ["printed by a fuzzed graph"], {"output_stream": f"file://{WRITTEN}"})]


# ---- mutations. Graph-level ones edit a parsed GraphDef in place and return False when they
# cannot apply; @on(test) hands them one random node passing `test`.
def _pick(rng, items):
    items = list(items)
    return rng.choice(items) if items else None

def on(test):
    def wrap(fn):
        def mutation(rng, g):
            n = _pick(rng, [n for n in g.node if test(n)])
            return False if n is None else fn(rng, g, n)
        mutation.__name__ = fn.__name__
        return mutation
    return wrap

ANY = lambda n: True
CONST = lambda n: n.op == "Const" and "value" in n.attr
ATTRS = lambda n: len(n.attr) > 0
INPUTS = lambda n: len(n.input) > 0
FLOAT_TYPES = {1: np.float32, 2: np.float64, 19: np.float16}

def m_delete_node(rng, g): del g.node[rng.randrange(len(g.node))]
def m_delete_graph_field(rng, g): g.ClearField(rng.choice(["versions", "library", "node"]))
@on(ANY)
def m_delete_node_field(rng, g, n): n.ClearField(rng.choice(["name", "op", "input", "device", "attr"]))
@on(ATTRS)
def m_delete_attr(rng, g, n): del n.attr[rng.choice(sorted(n.attr))]
@on(INPUTS)
def m_delete_input(rng, g, n): del n.input[rng.randrange(len(n.input))]
@on(INPUTS)
def m_duplicate_input(rng, g, n): n.input.insert(rng.randrange(len(n.input) + 1), rng.choice(n.input))
@on(lambda n: len(n.input) > 1)
def m_swap_inputs(rng, g, n):
    i, j = rng.sample(range(len(n.input)), 2)
    n.input[i], n.input[j] = n.input[j], n.input[i]
@on(INPUTS)
def m_rename_input(rng, g, n):  # to a missing node, another node (maybe a cycle), or a weird reference
    o = rng.choice(g.node).name
    n.input[rng.randrange(len(n.input))] = rng.choice(
        ["missing_node", o, f"{o}:{rng.choice([1, 2, 5, 99])}", "^" + o, "", ":0", f"{o}:", f"{o}:-1", "^", "^^" + o])
@on(ANY)
def m_add_control_input(rng, g, n): n.input.append("^" + rng.choice(g.node).name)
@on(ANY)
def m_change_op(rng, g, n): n.op = rng.choice(BN_OPS)
@on(ATTRS)
def m_attr_kind(rng, g, n):  # an int where a type/float/bool/string is expected, and so on
    value, kind = n.attr[rng.choice(sorted(n.attr))], rng.choice("ifbstSlc")
    if kind == "i": value.i = rng.choice([0, -1, 3, 2**40])
    elif kind == "f": value.f = rng.choice(SPECIAL)
    elif kind == "b": value.b = True
    elif kind == "s": value.s = rng.choice([b"", b"garbage", b"\xff\xfe\x00", b"NCHW"])
    elif kind == "t": value.type = rng.choice(DTYPES)
    elif kind == "S": value.shape.unknown_rank = True
    elif kind == "l": value.list.i.extend([1, 2, 3])
    else: value.Clear()
@on(lambda n: "data_format" in n.attr or n.op in BN_OPS)
def m_data_format(rng, g, n):
    choice = rng.choice([None, b"", b"NCHW", b"NHWC", b"NCDHW", b"NC", b"garbage", b"\xff"])
    if choice is None: n.attr.pop("data_format", None)
    else: n.attr["data_format"].s = choice
@on(lambda n: n.op.startswith("FusedBatchNorm"))
def m_is_training(rng, g, n): n.attr["is_training"].b = not n.attr["is_training"].b
@on(lambda n: "epsilon" in n.attr or "variance_epsilon" in n.attr)
def m_epsilon(rng, g, n): n.attr["epsilon" if "epsilon" in n.attr else "variance_epsilon"].f = rng.choice(SPECIAL)
@on(lambda n: CONST(n) and n.attr["value"].tensor.dtype in FLOAT_TYPES)
def m_const_values(rng, g, n):  # NaN, inf, a negative variance, ... in one element or all
    t = n.attr["value"].tensor
    np_type, vals = FLOAT_TYPES[t.dtype], {1: t.float_val, 2: t.double_val}.get(t.dtype)
    if t.tensor_content and len(t.tensor_content) % np.dtype(np_type).itemsize == 0:
        a = np.frombuffer(t.tensor_content, np_type).copy()
    elif not t.tensor_content and vals: a = np.array(vals, np_type)
    else: return False
    a[slice(None) if rng.random() < 0.3 else rng.randrange(a.size)] = rng.choice(SPECIAL)
    if t.tensor_content: t.tensor_content = a.tobytes()
    else: vals[:] = a.tolist()
@on(lambda n: CONST(n) and n.attr["value"].tensor.dtype in FLOAT_TYPES and n.attr["value"].tensor.tensor_content)
def m_scale_values(rng, g, n):  # finite but extreme: a tiny variance, a huge gamma, a zero or negated vector
    t = n.attr["value"].tensor
    a = np.frombuffer(t.tensor_content, FLOAT_TYPES[t.dtype]) if len(t.tensor_content) % np.dtype(
        FLOAT_TYPES[t.dtype]).itemsize == 0 else None
    if a is None: return False
    t.tensor_content = (a * rng.choice([0, 1e-6, 1e-3, 1e3, 1e6, -1, 2])).astype(a.dtype).tobytes()
def _read_by(rng, g, n):  # a new node name and the T of a node reading output `n`
    return f"{n.name}/fuzz_{len(g.node)}", n.attr["T"].type if "T" in n.attr else 1
@on(INPUTS)
def m_insert_identity(rng, g, n):  # Identity between a node and one of its inputs: same values
    i = rng.randrange(len(n.input))
    if n.input[i].startswith("^"): return False
    name, dtype = _read_by(rng, g, n)
    g.node.add(name=name, op="Identity", input=[n.input[i]]).attr["T"].type = dtype
    n.input[i] = name
@on(lambda n: n.op not in ("Const", "NoOp"))
def m_add_consumer(rng, g, n):  # one more reader (and output): of a host, a bias, a side output
    name, dtype = _read_by(rng, g, n)
    port = rng.choice([0, 0, 0, 1, 2]) if n.op.startswith("FusedBatchNorm") else 0
    g.node.add(name=name, op="Identity", input=[f"{n.name}:{port}" if port else n.name]).attr["T"].type = dtype
@on(ANY)
def m_side_effect(rng, g, n):  # a side-effect op that node `n` (and so maybe an output) waits for
    op, values, attrs = rng.choice(SIDE_EFFECTS)
    name = f"fuzz_{op}_{len(g.node)}"
    for i, value in enumerate(values):
        const = g.node.add(name=f"{name}/arg{i}", op="Const")
        const.attr["dtype"].type = 7  # DT_STRING
        const.attr["value"].tensor.dtype = 7
        const.attr["value"].tensor.string_val.append(value.encode())
    node = g.node.add(name=name, op=op, input=[f"{name}/arg{i}" for i in range(len(values))])
    for key, value in attrs.items():
        node.attr[key].s = value.encode()
    n.input.append("^" + name)
@on(CONST)
def m_const_dtype(rng, g, n):  # attr vs tensor disagree, or a consistent half/double re-encoding
    t, how = n.attr["value"].tensor, rng.random()
    if how < 0.3 and t.dtype == 1 and t.tensor_content and len(t.tensor_content) % 4 == 0:
        new = rng.choice([np.float16, np.float64])
        t.tensor_content = np.frombuffer(t.tensor_content, np.float32).astype(new).tobytes()
        t.dtype = n.attr["dtype"].type = 19 if new is np.float16 else 2
    elif how < 0.6: t.dtype = n.attr["dtype"].type = rng.choice(DTYPES)
    elif how < 0.8: n.attr["dtype"].type = rng.choice(DTYPES)
    else: t.dtype = rng.choice(DTYPES)
@on(CONST)
def m_const_shape(rng, g, n):  # rank/shape mismatch, a scalar for a vector, empty tensors
    t = n.attr["value"].tensor
    dims, how = [d.size for d in t.tensor_shape.dim], rng.choice(["scalar", "add1", "drop", "resize", "empty", "unknown"])
    if how == "unknown": t.tensor_shape.unknown_rank = True; return
    if how in ("drop", "resize") and not dims: return False
    if how == "scalar": dims = []
    elif how == "add1": dims.insert(rng.randrange(len(dims) + 1), 1)
    elif how == "drop": del dims[rng.randrange(len(dims))]
    elif how == "resize": i = rng.randrange(len(dims)); dims[i] = rng.choice([0, 1, 3, dims[i] + 1, dims[i] * 2])
    else: dims = [0]; t.ClearField("tensor_content")
    t.tensor_shape.ClearField("dim")
    for d in dims: t.tensor_shape.dim.add(size=d)
@on(CONST)
def m_tensor_content(rng, g, n):  # content whose length does not match the shape
    t, how = n.attr["value"].tensor, rng.choice(["cut", "extend", "clear", "vals"])
    if how == "cut" and t.tensor_content: t.tensor_content = t.tensor_content[: rng.randrange(len(t.tensor_content))]
    elif how == "extend": t.tensor_content += bytes(rng.choice([1, 2, 4, 8, 64]))
    elif how == "clear": t.ClearField("tensor_content")
    else: t.float_val.extend([1.0] * rng.choice([1, 5, 100]))
@on(lambda n: CONST(n) or "shape" in n.attr or "_output_shapes" in n.attr and len(n.attr["_output_shapes"].list.shape))
def m_huge_dim(rng, g, n):  # in a Const, a Placeholder's shape, or an _output_shapes entry
    shape = (n.attr["value"].tensor.tensor_shape if CONST(n) else n.attr["shape"].shape if "shape" in n.attr
             else rng.choice(n.attr["_output_shapes"].list.shape))
    if not shape.dim: shape.dim.add(size=1)
    rng.choice(shape.dim).size = rng.choice(HUGE)
@on(lambda n: n.op.startswith("Placeholder"))
def m_placeholder(rng, g, n):
    how = rng.random()
    if how < 0.4: n.attr["dtype"].type = rng.choice(DTYPES)
    elif how < 0.7: n.attr["shape"].shape.unknown_rank = True
    elif how < 0.85: n.attr.pop("shape", None)
    else: n.attr["shape"].shape.ClearField("dim")  # a scalar
@on(lambda n: any(k in n.attr for k in ("T", "U", "DstT", "SrcT")))
def m_type_attr(rng, g, n):  # e.g. half data into a float-only op
    n.attr[rng.choice([k for k in ("T", "U", "DstT", "SrcT") if k in n.attr])].type = rng.choice(DTYPES)
def m_producer(rng, g):
    g.versions.producer = rng.choice([9, 10, 26, 2474, 0, -1, 2**31 - 1])
    if rng.random() < 0.3: g.versions.min_consumer = rng.choice([0, 12, 2**31 - 1])
    if rng.random() < 0.1: g.versions.bad_consumers.append(rng.choice([0, 8, 2474]))
@on(ANY)
def m_rename_node(rng, g, n): n.name = rng.choice([rng.choice(g.node).name, "renamed", "", "a:1", "^b", "x/", "é"])
@on(ANY)
def m_duplicate_node(rng, g, n):
    g.node.add().CopyFrom(n)
    if rng.random() < 0.5: g.node[-1].name += "_dup"
def m_shuffle_nodes(rng, g):
    nodes = [copy.deepcopy(n) for n in g.node]
    rng.shuffle(nodes)
    del g.node[:]
    g.node.extend(nodes)


def b_bitflip(rng, data):
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)): out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)
def b_overwrite(rng, data):
    i, new = rng.randrange(len(data)), [rng.choice([0, 0x7f, 0x80, 0xff, rng.randrange(256)]) for _ in range(4)]
    return data[:i] + bytes(new[: rng.randint(1, 4)]) + data[i + 4:]
def b_truncate(rng, data): return data[: rng.randrange(len(data))]
def b_insert(rng, data):
    i = rng.randrange(len(data) + 1)
    return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[i:]
def b_duplicate_range(rng, data):
    i, k = rng.randrange(len(data)), rng.randrange(len(data) + 1)
    return data[:k] + data[i:i + rng.randint(1, 256)] + data[k:]

GARBAGE = ['attr { key: "T" value { i: 99999999999999999999 } }', "node {", "}", "{{", 'name: "\\xff"',
           "@#$%", 'op: ""', "input: 'missing'", "versions { producer: -5 }", "\x00"]
def _lines(fn):  # a text mutation edits the list of lines at a random line i
    def edit(rng, data):
        lines = data.decode("utf-8", "replace").split("\n")
        fn(rng, lines, rng.randrange(len(lines)))
        return "\n".join(lines).encode()
    edit.__name__ = fn.__name__
    return edit
@_lines
def t_delete_line(rng, lines, i): del lines[i]
@_lines
def t_duplicate_line(rng, lines, i): lines.insert(i, lines[i])
@_lines
def t_brace(rng, lines, i): lines.insert(i, rng.choice(["{", "}", "}}", "{ {"]))
@_lines
def t_garbage(rng, lines, i): lines.insert(i, rng.choice(GARBAGE))

# (weight, level, function): level "graph" edits a parsed GraphDef, "bytes" the serialized
# file (binary or text), "text" the lines of a .pbtxt.
MUTATIONS = [
    (4, "graph", m_delete_node), (1, "graph", m_delete_graph_field), (3, "graph", m_delete_node_field),
    (3, "graph", m_delete_attr), (3, "graph", m_delete_input), (2, "graph", m_duplicate_input), (3, "graph", m_swap_inputs),
    (4, "graph", m_rename_input), (2, "graph", m_add_control_input), (5, "graph", m_change_op),
    (4, "graph", m_attr_kind), (3, "graph", m_data_format), (2, "graph", m_is_training),
    (3, "graph", m_epsilon), (5, "graph", m_const_values), (4, "graph", m_const_dtype),
    (4, "graph", m_scale_values), (3, "graph", m_insert_identity), (4, "graph", m_add_consumer),
    (5, "graph", m_const_shape), (3, "graph", m_tensor_content), (3, "graph", m_huge_dim),
    (3, "graph", m_placeholder), (3, "graph", m_type_attr), (2, "graph", m_producer),
    (2, "graph", m_rename_node), (2, "graph", m_duplicate_node), (1, "graph", m_shuffle_nodes),
    (2, "graph", m_side_effect), (2, "bytes", b_bitflip), (1, "bytes", b_overwrite), (1, "bytes", b_truncate),
    (1, "bytes", b_insert), (1, "bytes", b_duplicate_range),
    (2, "text", t_delete_line), (1, "text", t_duplicate_line), (2, "text", t_brace), (2, "text", t_garbage),
]


def parse(data, text):
    g = graph_pb2.GraphDef()
    try: text_format.Parse(data.decode("utf-8"), g) if text else g.ParseFromString(data)
    except Exception: return None
    return g

def dump(g, text):
    return text_format.MessageToString(g).encode() if text else g.SerializeToString(deterministic=True)

def load_seeds(realgraphs=False):
    paths = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".pb", ".pbtxt"))
    if realgraphs and REALGRAPHS.is_dir():
        paths += sorted(p for p in REALGRAPHS.iterdir() if p.suffix in (".pb", ".pbtxt"))
    return [(p, p.read_bytes(), p.suffix == ".pbtxt") for p in paths]

# --gentle: mutations after which TensorFlow can usually still run the graph, so that the
# verified rewrite gets to compare outputs (exit 1 is the serious finding).
GENTLE = [m for m in MUTATIONS if m[2].__name__ in {
    "m_const_values", "m_scale_values", "m_epsilon", "m_insert_identity", "m_add_consumer", "m_add_control_input",
    "m_is_training", "m_producer", "m_shuffle_nodes", "m_swap_inputs", "m_change_op", "m_data_format",
    "m_rename_input", "m_side_effect"}]

def mutate(rng, seeds, table=MUTATIONS):
    """One case: (seed path, bytes, is_text, names of the mutations applied)."""
    path, data, text = rng.choice(seeds)
    if not text and rng.random() < 0.15:
        data, text = dump(parse(data, False), True), True
    applied = []
    for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
        for _attempt in range(10):
            weight, level, fn = rng.choices(table, [m[0] for m in table])[0]
            if level == "text" and not text or not data: continue
            if level == "graph":
                g = parse(data, text)
                with np.errstate(all="ignore"):
                    if g is None or not g.node or fn(rng, g) is False: continue
                data = dump(g, text)
            else:
                data = fn(rng, data)
            applied.append(fn.__name__)
            break
    return path, data, text, applied


# ---- one command in-process, judged against the contract
def _tf_runs(path):  # does TensorFlow run this graph as `rewrite` verifies it (default feeds)?
    from bnrewrite import index, load_graph, verify
    try:
        graph = load_graph(path)
        return verify.run(graph, verify.make_feeds(graph, verify.Options()), index.GraphIndex(graph).inferred_outputs()) is not None
    except Exception:
        return False

def _describe(error):  # an exception escaping main(): type, innermost bnrewrite frame, traceback
    frames = traceback.extract_tb(error.__traceback__)
    top = ([f for f in frames if "/bnrewrite/" in f.filename] or frames or [None])[-1]
    return {"type": type(error).__name__, "message": str(error)[:300], "where": f"{Path(top.filename).name}:"
            f"{top.name}" if top else "?", "traceback": "".join(traceback.format_exception(error))[-3000:]}

def run_in_process(argv, capture, original=None):
    """cli.main(argv): exit code, stderr (fd 2 for TensorFlow's C++ logs and sys.stderr, even under
    pytest, both append to `capture`), escaped exception; and if it says TensorFlow cannot run
    the graph, whether TensorFlow runs the `original` input file."""
    from bnrewrite import cli
    sys.stdout.flush(); sys.stderr.flush()
    saved, streams, start = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr), time.time()
    result = {"rc": None, "exc": None, "original_runs": None}
    Path(capture).write_bytes(b"")
    with open(capture, "ab", buffering=0) as err, open(os.devnull, "wb") as null, \
            open(capture, "a", buffering=1, errors="replace") as py_err, open(os.devnull, "w") as py_out:
        os.dup2(null.fileno(), 1); os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = py_out, py_err
        try:
            result["rc"] = cli.main(argv)
        except BaseException as error:  # anything escaping main() is an internal bug
            result["exc"] = _describe(error)
        finally:
            py_err.flush()
            result["stderr"] = Path(capture).read_bytes().decode("utf-8", "replace")
            if original and result["rc"] == 2 and re.search(r"TensorFlow (cannot run|crashed)", result["stderr"]):
                result["original_runs"] = _tf_runs(original)
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1); os.dup2(saved[1], 2); os.close(saved[0]); os.close(saved[1])
    return {**result, "secs": time.time() - start}

def runs_side_effect(path, data):
    """Does verifying this input run an op of SIDE_EFFECTS (the outputs depend on it)?"""
    from bnrewrite import index, names
    g = parse(data, str(path).endswith(".pbtxt"))
    if g is None: return False
    by_name, ops = {n.name: n for n in g.node}, {op for op, _, _ in SIDE_EFFECTS}
    todo, seen = index.GraphIndex(g).inferred_outputs(), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name: continue
        seen.add(name)
        todo.extend(names.node_of(ref) for ref in by_name[name].input)
    return any(by_name[name].op in ops for name in seen)

def judge(kind, result, out, original=None):
    """(outcome, signature or None). Outcomes: ok, exit2, exit1, bad-rewrite (TensorFlow runs
    the input but not its rewrite), crash, hang."""
    if result.get("hang"):
        return "hang", f"hang@{kind}:{result['where']}"
    if result.get("died") is not None:
        return "crash", f"died{result['died']}@{kind}:{result['where']}"
    if result["exc"]:
        return "crash", f"{result['exc']['type']}@{result['exc']['where']}"
    rc, lines = result["rc"], [l for l in result["stderr"].splitlines() if l.strip()]
    if rc not in (0, 1, 2) or rc == 1 and kind != "verify":
        return "crash", f"exit{rc}@{kind}"
    if list(Path(out).parent.glob(f".{Path(out).name}.*.tmp")):
        return "crash", f"tmp-left@{kind}"
    if original is not None and Path(original[0]).read_bytes() != original[1]:
        return "crash", f"input-modified@{kind}"
    if WRITTEN.exists():
        WRITTEN.unlink()
        return "crash", f"graph-wrote-file@{kind}"
    if kind != "audit" and Path(out).exists() != (rc == 0):
        return "crash", f"{'partial-file' if rc else 'no-output'}@{kind}"
    if rc == 0 and kind == "verify" and original is not None and runs_side_effect(*original):
        return "crash", "unsafe-ran@verify"
    if rc == 0:
        return "ok", None
    if len(lines) != 1 or not lines[0].startswith("bnrewrite: ") or "Traceback" in result["stderr"]:
        foreign = next((l for l in lines if not l.startswith("bnrewrite: ")), "")
        log = re.match(r"[IWEF]\d{4} [\d:.]+\s+\d+ ([\w.]+):\d+\]", foreign)  # a TensorFlow C++ log line
        what = log.group(1) if log else re.sub(r"[\d\W]+", "_", foreign[:30]).strip("_")
        return "crash", f"stderr@{kind}:{what or len(lines)}"
    if result.get("original_runs"):
        why = re.sub(r"'[^']*'|\S*[/:]\S*|\d+", "", re.split(r"TensorFlow (?:cannot run the graph: )?", lines[0])[-1])
        return "bad-rewrite", "tf-rejects-rewrite@verify:" + "_".join(why.split()[:5])
    if rc == 1:
        found = [k for k in ("NaN", "infinities", "shape", "values differ") if k in lines[0]]
        return "exit1", f"exit1@verify:{(found or ['tolerance'])[0].split()[0]}"
    return "exit2", None


# ---- worker processes: one command at a time, killed and restarted on a hang or a death
def _worker_main(conn, mem_bytes, scratch):
    os.setpgrp()  # its own process group: a timeout also ends the TensorFlow process it starts
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))  # inherited by that process too
    trace = open(Path(scratch) / "faulthandler.txt", "w")
    faulthandler.enable(trace)  # where a hang or a fatal signal happened
    while True:
        argv, timeout, original = conn.recv()
        trace.seek(0); trace.truncate()
        faulthandler.dump_traceback_later(max(1, timeout - 3), file=trace)
        result = run_in_process(argv, str(Path(scratch) / "stderr.txt"), original)
        faulthandler.cancel_dump_traceback_later()
        conn.send(result)

class Worker:
    def __init__(self, mem_bytes, timeout):
        self.mem, self.timeout, self.proc = mem_bytes, timeout, None
        self.scratch = Path(tempfile.mkdtemp(prefix="bnfuzz-w"))

    def run(self, argv, original=None):
        if self.proc is None:
            ctx = multiprocessing.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_worker_main, args=(child, self.mem, str(self.scratch)), daemon=True)
            self.scratch.mkdir(exist_ok=True)
            self.proc.start()
            child.close()  # or a dead worker's pipe never reports EOF
        start = time.time()
        self.conn.send((argv, self.timeout, original))
        try:
            if self.conn.poll(self.timeout):
                return self.conn.recv()
            hang = True
        except (EOFError, ConnectionError):
            hang = False
        self.close(keep_scratch=True)
        trace = (self.scratch / "faulthandler.txt").read_text(errors="replace") if self.scratch.exists() else ""
        ours = [f for f in re.findall(r'File "([^"]+)", line \d+ in (\w+)', trace) if "/bnrewrite/" in f[0]]
        where = f"{Path(ours[0][0]).name}:{ours[0][1]}" if ours else "?"
        return {"hang": True, "where": where} if hang else {"died": self.exitcode, "where": where,
                                                            "secs": time.time() - start}

    def close(self, keep_scratch=False):  # the worker and what it started, by its process group
        if self.proc is not None:
            try: os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError): self.proc.kill()
            self.proc.join()
            self.exitcode, self.proc = self.proc.exitcode, None
        if not keep_scratch: shutil.rmtree(self.scratch, ignore_errors=True)

def run_case(runner, data, text, commands, workdir):
    """Run each (kind, argv) on the input `data`: [(kind, outcome, signature, result)]."""
    shutil.rmtree(workdir, ignore_errors=True); workdir.mkdir(parents=True)
    inp, out = workdir / ("in.pbtxt" if text else "in.pb"), workdir / "out.pb"
    inp.write_bytes(data)
    found = []
    for kind, argv in commands:
        out.unlink(missing_ok=True)
        result = runner([str(inp) if a == "IN" else str(out) if a == "OUT" else a for a in argv],
                        str(inp) if kind == "verify" else None)
        found.append((kind, *judge(kind, result, out, (inp, data)), result))
    return found


# ---- minimise and save
def _cut_ranges(value, length, cut, same):  # delete ever smaller ranges while `same` holds
    size = max(1, length(value) // 2)
    while size >= 1:
        i = 0
        while i < length(value):
            trial = cut(value, i, size)
            if length(trial) and same(trial): value = trial
            else: i += size
        size //= 2
    return value

def _edited(g, edit):
    trial = copy.deepcopy(g)
    edit(trial)
    return trial

def minimise(runner, data, text, kind, argv, signature, workdir, budget):
    """Greedy, within `budget` runs: delete node ranges, then attrs and inputs, then graph fields,
    while `signature` persists (binary if it survives that); else delete byte ranges."""
    runs = [0]
    def same(value, fmt=None):
        runs[0] += 1
        data = value if fmt is None and isinstance(value, bytes) else dump(value, text if fmt is None else fmt)
        return runs[0] <= budget and run_case(runner, data, text if fmt is None else fmt,
                                              [(kind, argv)], workdir)[0][2] == signature
    g = parse(data, text)
    fmt = next((t for t in ([False, True] if text else [False]) if same(g, t)), None) if g else None
    if fmt is None:  # the signature needs these very bytes
        return _cut_ranges(data, len, lambda d, i, n: d[:i] + d[i + n:], same), text
    text, before = fmt, None
    while before != dump(g, text) and runs[0] < budget:
        before = dump(g, text)
        g = _cut_ranges(g, lambda x: len(x.node), lambda x, i, n: _edited(x, lambda t: t.node.__delitem__(
            slice(i, i + n))), same)
        for n in range(len(g.node)):
            for key in sorted(g.node[n].attr):
                trial = _edited(g, lambda t: t.node[n].attr.__delitem__(key))
                g = trial if same(trial) else g
            for i in reversed(range(len(g.node[n].input))):
                trial = _edited(g, lambda t: t.node[n].input.__delitem__(i))
                g = trial if same(trial) else g
        for field in ("library", "versions"):
            trial = _edited(g, lambda t: t.ClearField(field))
            g = trial if g.HasField(field) and same(trial) else g
    return dump(g, text), text

def slug(signature):
    return re.sub(r"[^A-Za-z0-9]+", "_", signature.replace(".py", "")).strip("_")[:60]

def save(outdir, signature, kind, argv, data, text, meta, still_fails=lambda sidecar: True):
    """Write crash_<sig>[_N].pb(txt) + .json. A saved input that still fails the same way is
    replaced when the new one is smaller; one that no longer fails stays, as a regression test.
    exit1 signatures (only the kind of difference) are too coarse to merge: each gets a file."""
    outdir.mkdir(parents=True, exist_ok=True)
    expected = "exit 0" if signature.startswith("exit1@") else "exit 2"
    for n in range(1, 100):
        name = "crash_" + slug(signature) + ("" if n == 1 else f"_{n}")
        sidecar = outdir / (name + ".json")
        if not sidecar.exists():
            break
        old = json.loads(sidecar.read_text())
        if old.get("signature") == signature and not signature.startswith("exit1") and still_fails(sidecar):
            if (outdir / old["input"]).stat().st_size <= len(data):
                return outdir / old["input"]
            (outdir / old["input"]).unlink()
            expected = old.get("expected", expected)  # may have been edited by hand
            break
    path = outdir / (name + (".pbtxt" if text else ".pb"))
    path.write_bytes(data)
    sidecar.write_text(json.dumps({"signature": signature, "command": argv, "kind": kind, "input": path.name,
                                   "expected": expected, **meta}, indent=1, sort_keys=True) + "\n")
    return path

def reproduce_command(path, argv):
    path = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return ".venv/bin/python -m bnrewrite " + " ".join(
        str(path) if a == "IN" else "/tmp/out.pb" if a == "OUT" else a for a in argv)


# ---- the fuzzing loop, and the entry points the regression tests use
def fuzz(args):
    seeds, start = load_seeds(args.realgraphs), time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bnfuzz-"))
    workers = [Worker(args.mem_gib << 30, args.timeout) for _ in range(args.workers)]
    free, lock = list(workers), threading.Lock()
    per_kind, per_case, counts, noisy, refusals = defaultdict(Counter), Counter(), Counter(), Counter(), Counter()
    first, slow, saved = {}, [], {}  # first: signature -> (case, kind, argv, data, text, seed, mutations, message)

    def with_worker(fn):
        with lock: worker = free.pop()
        try: return fn(worker)
        finally:
            with lock: free.append(worker)

    def one(i):
        rng = random.Random(args.seed * 1_000_003 + i)
        seed, data, text, applied = mutate(rng, seeds, GENTLE if args.gentle else MUTATIONS)
        commands = [("audit", COMMANDS["audit"]), ("rewrite", COMMANDS["rewrite"] + (
            ["--mode", "fuse"] if rng.random() < 0.25 else []))]
        if args.verify or (not args.no_verify and i % args.verify_every == 0):
            commands.append(("verify", COMMANDS["verify"] + (["--mode", "fuse"] if rng.random() < 0.25 else [])))
        found = with_worker(lambda w: run_case(w.run, data, text, commands, workdir / f"case{id(w)}"))
        with lock:
            rank = ["ok", "exit2", "exit1", "bad-rewrite", "hang", "crash"]
            per_case[max((o for _, o, _, _ in found), key=rank.index)] += 1
            for (kind, outcome, sig, result), (_, argv) in zip(found, commands):
                per_kind[kind][outcome] += 1
                if result.get("secs", 0) > 10: slow.append((round(result["secs"], 1), kind, i))
                if outcome == "ok" and result["stderr"].strip(): noisy[result["stderr"].strip()[:100]] += 1
                if outcome == "exit2": refusals[re.sub(r"^bnrewrite: [^:]*: ", "", result["stderr"].strip())[:70]] += 1
                counts[sig] += bool(sig)
                if sig and sig not in first:
                    message = (result.get("exc") or {}).get("message") or result.get("stderr", "")[:300]
                    first[sig] = (i, kind, argv, data, text, seed, applied, message)
                    print(f"[{i}] new {outcome}: {sig} ({kind}, {seed.name}, {applied})", flush=True)
        if (i + 1) % 250 == 0: print(f"... {i + 1} cases", flush=True)

    def shrink(sig, worker):
        i, kind, argv, data, text, seed, applied, message = first[sig]
        small, small_text = minimise(worker.run, data, text, kind, argv, sig, workdir / f"min{id(worker)}",
                                     0 if sig.startswith("hang") else args.budget)
        meta = {"found_by": f"tools/fuzz.py --seed {args.seed} (case {i})", "seed_graph": seed.name,
                "mutations": applied, "message": message[:300]}
        saved[sig] = save(Path(args.out), sig, kind, argv, small, small_text, meta,
                          lambda sidecar: replay(sidecar, worker=worker)[1] == sig)
    try:
        with ThreadPoolExecutor(len(workers)) as pool:
            list(pool.map(one, range(args.start, args.start + args.iterations)))
            list(pool.map(lambda sig: with_worker(lambda w: shrink(sig, w)), sorted(first)))
    finally:
        for w in workers: w.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{args.iterations} cases in {time.time() - start:.0f} s (seed {args.seed})")
    print("per case (worst outcome):", dict(per_case))
    for kind, c in per_kind.items(): print(f"  {kind:8s}", dict(c))
    print(f"\n{len(first)} distinct signatures:")
    for sig in sorted(first):
        i, kind, argv = first[sig][:3]
        print(f"  {sig}  x{counts[sig]} (first: case {i})\n    saved {saved[sig]}\n    "
              f"{reproduce_command(saved[sig], argv)}\n    {first[sig][7].strip()[:200]}")
    if slow: print("\nslow (> 10 s):", sorted(slow, reverse=True)[:10])
    if noisy: print("\nstderr on exit 0:", noisy.most_common(5))
    print("\nmost common refusals (exit 2):")
    for message, n in refusals.most_common(args.show_refusals): print(f"  {n:5d}  {message}")
    return 1 if first else 0

def smoke(n=30, seed=0, commands=("audit", "rewrite")):
    """n seeded cases in this process (no workers): [(case, mutations, kind, outcome, signature)]."""
    seeds, outcomes = load_seeds(), []
    with tempfile.TemporaryDirectory() as tmp:
        runner = lambda argv, original: run_in_process(argv, str(Path(tmp) / "stderr.txt"), original)
        for i in range(n):
            _, data, text, applied = mutate(random.Random(seed * 1_000_003 + i), seeds)
            found = run_case(runner, data, text, [(k, COMMANDS[k]) for k in commands], Path(tmp) / "case")
            outcomes += [(i, applied, kind, outcome, sig) for kind, outcome, sig, _ in found]
    return outcomes

def replay(sidecar, timeout=60, mem_gib=4, worker=None):
    """Run a saved case in a worker (address-space cap, timeout): (outcome, signature, result)."""
    meta = json.loads(Path(sidecar).read_text())
    path, own = Path(sidecar).parent / meta["input"], worker is None
    worker = worker or Worker(mem_gib << 30, timeout)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            [(_, outcome, sig, result)] = run_case(worker.run, path.read_bytes(), path.suffix == ".pbtxt",
                                                   [(meta["kind"], meta["command"])], Path(tmp) / "case")
    finally:
        if own: worker.close()
    return outcome, sig, result

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first case number (to resume a run)")
    p.add_argument("--verify", action="store_true", help="run the verified rewrite on every case")
    p.add_argument("--no-verify", action="store_true", help="never run the verified rewrite")
    p.add_argument("--verify-every", type=int, default=10)
    p.add_argument("--realgraphs", action="store_true", help="also mutate ../shared/realgraphs/*")
    p.add_argument("--gentle", action="store_true", help="only mutations TensorFlow usually still runs")
    p.add_argument("--out", default=str(FIXTURES / "fuzz"), help="where crash inputs are saved")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    p.add_argument("--mem-gib", type=int, default=4)
    p.add_argument("--budget", type=int, default=300, help="runs allowed to minimise one signature")
    p.add_argument("--show-refusals", type=int, default=15)
    p.add_argument("--replay", metavar="JSON", help="rerun one saved case and print its outcome")
    args = p.parse_args()
    if args.replay:
        outcome, sig, result = replay(args.replay, args.timeout, args.mem_gib)
        print(outcome, sig or "", (result.get("exc") or {}).get("traceback") or result.get("stderr", ""))
        return 0 if outcome in ("ok", "exit2") else 1
    return fuzz(args)


if __name__ == "__main__":
    sys.exit(main())
