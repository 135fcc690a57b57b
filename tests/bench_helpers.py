"""Tiny .tflite models and a fake `adb`, shared by the tflite_bench tests (a plain helper
module, not a test module).

- build_tflite, fc_model: one-subgraph .tflite flatbuffers written without TensorFlow. Used by
  test_bench_model_info.py, test_bench_runner.py, test_bench_device.py and test_bench_cli.py.
  OPS and T are short names of the schema enums (also used by test_bench_model_info.py).
- install_fake_adb (FAKE_ADB): a script standing in for adb and a device running
  benchmark_model. Used by test_bench_device.py and test_bench_cli.py.
"""

import os
import stat
import sys
import textwrap

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

OPS = fb.BuiltinOperator
T = fb.TensorType


def build_tflite(path, tensors, operators, inputs, outputs, sparse=()):
    """Writes a one-subgraph .tflite file without TensorFlow.

    Args:
        path: destination.
        tensors: list of (shape, dtype) for activations, or (shape, dtype, ndarray) for
            constants (the array's bytes become the buffer).
        operators: list of (BuiltinOperator code, input ids, output ids, options type,
            options object or None).
        inputs, outputs: subgraph input / output tensor ids.
        sparse: ids of constant tensors marked sparse-encoded (their buffer holds only the
            values; the index metadata here is a placeholder, enough for model_info).
    """
    model = fb.ModelT()
    model.version = 3
    model.buffers = [fb.BufferT()]  # buffer 0: the empty sentinel
    codes = []
    sub = fb.SubGraphT()
    sub.tensors = []
    for i, spec in enumerate(tensors):
        t = fb.TensorT()
        t.name = f"t{i}".encode()
        t.shape = np.asarray(spec[0], np.int32)
        t.type = spec[1]
        b = fb.BufferT()
        if len(spec) == 3:
            b.data = np.frombuffer(np.ascontiguousarray(spec[2]).tobytes(), np.uint8)
        model.buffers.append(b)
        t.buffer = len(model.buffers) - 1
        if i in sparse:
            t.sparsity = fb.SparsityParametersT()
            t.sparsity.traversalOrder = np.arange(len(spec[0]), dtype=np.int32)
        sub.tensors.append(t)
    sub.operators = []
    for code, ins, outs, opt_type, opts in operators:
        if code not in codes:
            codes.append(code)
        op = fb.OperatorT()
        op.opcodeIndex = codes.index(code)
        op.inputs = np.asarray(ins, np.int32)
        op.outputs = np.asarray(outs, np.int32)
        op.builtinOptionsType = opt_type
        op.builtinOptions = opts
        sub.operators.append(op)
    model.operatorCodes = []
    for code in codes:
        oc = fb.OperatorCodeT()
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = min(code, 127)
        oc.version = 1
        model.operatorCodes.append(oc)
    sub.inputs = np.asarray(inputs, np.int32)
    sub.outputs = np.asarray(outputs, np.int32)
    model.subgraphs = [sub]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(path, "wb") as f:
        f.write(bytes(builder.Output()))
    return path


def fc_model(path, n_in, n_out, seed=0, batch=1):
    """A runnable FULLY_CONNECTED model: (batch, n_in) -> (batch, n_out)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    opts = fb.FullyConnectedOptionsT()
    return build_tflite(
        path,
        [((batch, n_in), T.FLOAT32), ((n_out, n_in), T.FLOAT32, w), ((n_out,), T.FLOAT32, b),
         ((batch, n_out), T.FLOAT32)],
        [(OPS.FULLY_CONNECTED, [0, 1, 2], [3], fb.BuiltinOptions.FullyConnectedOptions, opts)],
        [0], [3])


FAKE_ADB = textwrap.dedent('''\
    #!{python}
    """A stand-in for adb: answers like a device running benchmark_model."""
    import os, sys
    args = sys.argv[1:]
    if args[:1] == ["-s"]:
        args = args[2:]
    with open(os.environ["FAKE_ADB_LOG"], "a") as f:
        f.write(" ".join(args) + "\\n")
    if args[0] == "get-state":
        print(os.environ.get("FAKE_ADB_STATE", "device")); sys.exit(0)
    if args[0] == "push":
        sys.exit(0)
    if args[0] == "shell" and args[1] == "getprop":
        print("FakePhone"); sys.exit(0)
    if args[0] == "shell" and len(args) == 2:
        cmd = args[1]
        graph = [a for a in cmd.split() if a.startswith("--graph=")][0][8:]
        threads = [a for a in cmd.split() if a.startswith("--num_threads=")][0][14:]
        if "broken" in graph:
            print("ERROR: Failed to allocate tensors!"); sys.exit(1)
        us = 100 if "big" in graph else 25
        print(f"INFO: Num threads: [{{threads}}]")
        print(f"INFO: Graph: [{{graph}}]")
        print(f"INFO: count=20 first={{us*3}} curr={{us}} min={{us}} max={{us*3}} avg={{us}} std=1")
        print(f"INFO: count=200 first={{us}} curr={{us}} min={{us}} max={{us}} avg={{us}} std=0 "
              f"p5={{us}} median={{us}} p95={{us}}")
        print(f"INFO: Inference timings in us: Init: 900, First inference: {{us*3}}, "
              f"Warmup (avg): {{us}}, Inference (avg): {{us}}")
        sys.exit(0)
    sys.exit(0)
''')


def install_fake_adb(tmp_path) -> dict:
    """Writes the fake `adb` into tmp_path/bin; returns the environment variables that put it
    first on PATH and send its log to tmp_path/adb.log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_ADB_LOG": str(tmp_path / "adb.log")}
