"""The timing worker: one process per model, driven by the parent over pipes.

Run as `python -m tflite_bench._worker`. It never imports TensorFlow (only ai_edge_litert and
NumPy), pins itself to the requested cores where the OS allows, and answers JSON lines:

    {"cmd": "load", "path", "threads", "kernels", "warmup", "seed", "cores"}
        -> {"ok": true, "init_ms", "first_us", "pid", "affinity", "tensorflow_imported"}
    {"cmd": "run", "n"}   -> {"ok": true, "times_us": [n per-invoke times]}
    {"cmd": "quit"}       -> the process exits

Any failure answers {"ok": false, "error": "<one line>"} and the worker stays alive, so one bad
model never stops the others. The protocol uses a private copy of the original stdout; file
descriptor 1 is pointed at stderr so that messages printed by the C++ runtime cannot corrupt it.
"""

from __future__ import annotations

import json
import os
import sys
import time

KERNELS = ("xnnpack", "builtin", "reference")


def _index_bound(interp):
    """An upper bound for random integer ids: the smallest dimension of the tables that
    GATHER / EMBEDDING_LOOKUP ops read from (ids below it are valid for every such op, on any
    axis), or 11 when the model has none. Keras' Embedding reaches GATHER through a few
    index ops (negative ids wrap), so the ids are not traced to their op."""
    try:
        ops = interp._get_ops_details()
        shapes = {t["index"]: tuple(int(d) for d in t["shape"])
                  for t in interp.get_tensor_details()}
    except Exception:  # noqa: BLE001 - a private helper of the interpreter: be safe
        return 11
    sizes = []
    for op in ops:
        table = {"GATHER": 0, "GATHER_ND": 0, "EMBEDDING_LOOKUP": 1}.get(op["op_name"])
        if table is not None and len(op["inputs"]) > table:
            shape = shapes.get(int(op["inputs"][table]), ())
            if shape:
                sizes.append(min(shape))
    return max(1, min(sizes)) if sizes else 11


def _random_inputs(details, seed, index_bound=11):
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    for d in details:
        shape = [int(s) for s in d["shape"]]
        signature = [int(s) for s in d.get("shape_signature", shape)]
        if any(s < 0 for s in signature[1:]):  # allocate_tensors made them 1
            raise ValueError(
                f"Input {d.get('name')!r} has a dynamic dimension other than the batch, which "
                "would be timed at size 1; export the model with a fixed input shape. "
                f"Received: shape_signature={signature}")
        dtype = np.dtype(d["dtype"])
        if np.issubdtype(dtype, np.floating):
            v = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            v = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            lo, hi = max(int(info.min), -128), min(int(info.max), 127)
            if dtype in (np.int32, np.int64):
                lo = 0  # often indices: keep them small and valid
                hi = index_bound - 1
            v = rng.integers(lo, hi + 1, shape).astype(dtype)
        else:
            raise ValueError("Unsupported input dtype: inputs must be float, int or bool "
                             f"tensors. Received: dtype={dtype}")
        values.append(v)
    return values


class _Session:
    def __init__(self):
        self.interpreter = None

    def load(self, msg):
        from ai_edge_litert import interpreter as lite

        self.interpreter = None
        cores = msg.get("cores")
        affinity = None
        if hasattr(os, "sched_setaffinity"):
            if cores:
                os.sched_setaffinity(0, set(int(c) for c in cores))
            affinity = sorted(os.sched_getaffinity(0))
        resolver = {
            "xnnpack": lite.OpResolverType.AUTO,
            "builtin": lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "reference": lite.OpResolverType.BUILTIN_REF,
        }[msg["kernels"]]
        t0 = time.perf_counter()
        interp = lite.Interpreter(model_path=msg["path"], num_threads=int(msg["threads"]),
                                  experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
        init_ms = (time.perf_counter() - t0) * 1e3
        for d, v in zip(interp.get_input_details(),
                        _random_inputs(interp.get_input_details(), msg["seed"],
                                       _index_bound(interp)), strict=True):
            interp.set_tensor(d["index"], v)
        t0 = time.perf_counter_ns()
        interp.invoke()
        first_us = (time.perf_counter_ns() - t0) / 1e3
        for _ in range(int(msg["warmup"])):
            interp.invoke()
        self.interpreter = interp
        return {"init_ms": init_ms, "first_us": first_us, "pid": os.getpid(),
                "affinity": affinity, "tensorflow_imported": "tensorflow" in sys.modules}

    def run(self, msg):
        if self.interpreter is None:
            raise RuntimeError("No model is loaded: send a 'load' command first.")
        invoke = self.interpreter.invoke
        clock = time.perf_counter_ns
        times = []
        for _ in range(int(msg["n"])):
            t0 = clock()
            invoke()
            times.append((clock() - t0) / 1e3)
        return {"times_us": times}


def main():
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    session = _Session()
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("cmd") == "quit":
            break
        try:
            handler = {"load": session.load, "run": session.run}[msg.get("cmd")]
            reply = {"ok": True, **handler(msg)}
        except Exception as e:  # reported to the parent, which decides
            text = " ".join(f"{type(e).__name__}: {e}".split())
            reply = {"ok": False, "error": text}
        proto.write(json.dumps(reply) + "\n")
    proto.close()


if __name__ == "__main__":
    main()
