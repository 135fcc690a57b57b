"""On-device runs: parse TFLite's benchmark_model output, and drive it over adb.

benchmark_model (tensorflow/lite/tools/benchmark) prints, per run:

    INFO: Graph: [/data/local/tmp/model.tflite]
    INFO: Num threads: [2]
    INFO: count=20 first=1500 curr=900 min=880 max=1500 avg=950.5 std=120        (warmup)
    INFO: count=200 first=910 curr=905 min=870 max=1300 avg=912.3 std=31 p5=880 median=905 p95=960
    INFO: Inference timings in us: Init: 2345, First inference: 1500, Warmup (avg): 950.5,
          Inference (avg): 912.3

(older versions print no percentiles, and no "INFO: " prefix). Each "Inference timings in us"
line closes one run; the lines before it describe that run. Parsed runs become entries of the
same JSON structure as `tflite_bench.benchmark`; fields the log does not give are None
(`p10_us`/`p90_us` always; `median_us` for logs without percentiles, in which case speedups use
means and `settings.speedup_basis` says so). A log has one run per model and thread count, so
no confidence interval is given.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

from tflite_bench import model_info as _info
from tflite_bench.runner import ENTRY_KEYS, SCHEMA_VERSION, add_ratios

DEVICE_DIR = "/data/local/tmp/tflite_bench"
_TIMINGS = re.compile(r"inference timings in us:\s*(.*)", re.IGNORECASE)
_STAT = re.compile(r"count=(\d+)(.*)")
_KV = re.compile(r"(\w+)=(-?[\d.eE+]+)")
_PARAM = re.compile(r"^(?:\w+:\s+)?([A-Za-z][A-Za-z ()]*?):\s*\[(.*)\]\s*$")
_INIT_SESSION = re.compile(r"Initialized session in ([\d.]+)\s*ms")


def _timings(text):
    out = {}
    for part in text.split(","):
        if ":" in part:
            k, v = part.split(":", 1)
            try:
                out[k.strip()] = float(v.strip())
            except ValueError:
                pass
    return out


def parse_runs(text):
    """Splits a benchmark_model log into runs and parses each.

    Args:
        text: the log's text.

    Returns:
        A list of dicts, one per "Inference timings in us" line: `graph`, `threads`,
        `use_xnnpack`, `num_runs` (requested), `warmup_runs` (requested), `count`, `avg`,
        `std`, `min`, `max`, `median`, `p5`, `p95` (the last `count=` line of the run: the
        inference stats), `init_us`, `first_us`, `warmup_avg_us`, `inference_avg_us`.

    Raises:
        ValueError: if the log has no "Inference timings in us" line, or a run has no
            inference time (neither an average on that line nor a `count=` statistics line).

    Example:

    >>> runs = parse_runs(open("benchmark_model.log").read())  # doctest: +SKIP
    >>> runs[0]["inference_avg_us"]  # doctest: +SKIP
    912.3
    """
    runs, current = [], {"params": {}, "stats": []}
    for raw in text.splitlines():
        line = raw.strip()
        m = _TIMINGS.search(line)
        if m:
            t = _timings(m.group(1))
            p, stats = current["params"], current["stats"]
            inf = stats[-1] if stats else {}
            run = {
                "graph": p.get("Graph"),
                "threads": _int(p.get("Num threads")),
                "use_xnnpack": p.get("Use xnnpack"),
                "num_runs": _int(p.get("Min num runs", p.get("Num runs"))),
                "warmup_runs": _int(p.get("Min warmup runs", p.get("Warmup runs"))),
                "count": _int(inf.get("count")),
                "init_us": t.get("Init"),
                "first_us": t.get("First inference"),
                "warmup_avg_us": t.get("Warmup (avg)", t.get("Warmup")),
                "inference_avg_us": t.get("Inference (avg)", t.get("Inference")),
            }
            for k in ("avg", "std", "min", "max", "median", "p5", "p95"):
                run[k] = inf.get(k)
            if run["init_us"] is None and current.get("init_ms") is not None:
                run["init_us"] = current["init_ms"] * 1e3
            runs.append(run)
            current = {"params": dict(p), "stats": []}  # params carry over (perf-options runs)
            continue
        m = _STAT.search(line)
        if m and "first=" in line:
            stat = {k: float(v) for k, v in _KV.findall(line)}
            current["stats"].append(stat)
            continue
        m = _INIT_SESSION.search(line)
        if m:
            current["init_ms"] = float(m.group(1))
            continue
        m = _PARAM.match(line)
        if m:
            current["params"][m.group(1).strip()] = m.group(2).strip()
    if not runs:
        raise ValueError("The log has no 'Inference timings in us' line: it is not the "
                         "output of a finished benchmark_model run.")
    for i, r in enumerate(runs, 1):
        if all(r[k] is None for k in ("median", "avg", "inference_avg_us")):
            which = f"run {i} of {len(runs)}" + (f" (graph {r['graph']})" if r["graph"] else "")
            raise ValueError(
                f"The log has no inference time for {which}. Expected: 'Inference (avg): N' on "
                f"its 'Inference timings in us' line, or a 'count=N first=N ... avg=N' line "
                f"before it. Received: a timings line with only "
                f"{_present(r) or 'no timing'}.")
    return runs


def _present(run):
    names = {"init_us": "Init", "first_us": "First inference", "warmup_avg_us": "Warmup (avg)"}
    return ", ".join(v for k, v in names.items() if run[k] is not None)


def _int(x):
    if x is None:
        return None
    try:
        return int(float(x))
    except ValueError:
        return None


def parse_log(text, local_models=None, machine=None, graph=None):
    """Converts a benchmark_model log into the JSON structure of `tflite_bench.benchmark`.

    Args:
        text: the log's text (it may hold several runs).
        local_models: optional .tflite paths; a run whose graph has the same file name gets
            the file's size, parameters and MACs (so MAC ratios can be shown).
        machine: optional dict for `result["machine"]` (e.g. the device's model).
        graph: the model path to use for runs whose log names no graph.

    Returns:
        A result dict (`source` "benchmark_model"); the first run's model is the baseline.

    Raises:
        ValueError: if the log has no finished run, or a run has no inference time.

    Example:

    >>> r = parse_log(open("phone.log").read(), local_models=["dense.tflite"])  # doctest: +SKIP
    """
    runs = parse_runs(text)
    by_name = {}
    for p in local_models or []:
        by_name[os.path.basename(os.fspath(p))] = _info.model_info(p)
    entries = []
    for r in runs:
        path = r["graph"] or graph or "unknown.tflite"
        name = os.path.basename(path)
        e = dict.fromkeys(ENTRY_KEYS)
        e.update(path=path, name=name, threads=r["threads"] if r["threads"] else 1,
                 median_us=r["median"], mean_us=r["avg"] if r["avg"] is not None
                 else r["inference_avg_us"], std_us=r["std"], min_us=r["min"],
                 runs=r["count"], first_us=r["first_us"],
                 init_ms=None if r["init_us"] is None else r["init_us"] / 1e3)
        e["p5_us"], e["p95_us"] = r["p5"], r["p95"]
        info = by_name.get(name)
        if info:
            e.update(size_bytes=info["size_bytes"], params=info["params"], macs=info["macs"])
        entries.append(e)
    basis = "median" if all(e["median_us"] is not None for e in entries) else "mean"
    key = "median_us" if basis == "median" else "mean_us"
    first = entries[0]["path"]
    base = {}
    for e in entries:
        if e["path"] == first:
            base.setdefault(e["threads"], e)
    for e in entries:
        b = base.get(e["threads"])
        if b and b[key] and e[key]:
            e["speedup_vs_first"] = b[key] / e[key]
    add_ratios(entries)
    settings = {"threads": sorted({e["threads"] for e in entries}),
                "runs": runs[0]["num_runs"], "warmup": runs[0]["warmup_runs"],
                "kernels": {"1": "xnnpack", "true": "xnnpack", "0": "builtin",
                            "false": "builtin"}.get(str(runs[0]["use_xnnpack"]).lower(),
                                                    "unknown"),
                "speedup_basis": basis, "source": "benchmark_model"}
    return {"schema_version": SCHEMA_VERSION, "machine": machine or {}, "settings": settings,
            "models": entries}


class AdbError(RuntimeError):
    """adb is missing, no device is attached, or a command on the device failed."""


def _adb(adb, serial, *args, timeout=600):
    cmd = [adb] + (["-s", serial] if serial else []) + list(args)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AdbError(f"adb failed: {e}") from None
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise AdbError(f"`{' '.join(cmd)}` failed with exit code {p.returncode}"
                       + (f": {msg[-1]}" if msg else ""))
    return p.stdout


def run_adb(paths, binary, threads=(1,), runs=200, warmup=20, xnnpack=True, serial=None,
            adb="adb"):
    """Pushes models and a benchmark_model binary to an Android device and runs it.

    Args:
        paths: local .tflite files; the first is the baseline.
        binary: local path of a benchmark_model binary built for the device.
        threads: thread counts (`--num_threads`).
        runs: `--num_runs`.
        warmup: `--warmup_runs`.
        xnnpack: `--use_xnnpack`.
        serial: the device's serial (`adb -s`), or None for the only device.
        adb: the adb executable.

    Returns:
        A result dict, as `parse_log` returns, with the device in `machine`.

    Raises:
        AdbError: if adb is missing, no device is attached, or a device command fails.
        FileNotFoundError: if a model or the binary does not exist.

    Example:

    >>> r = run_adb(["dense.tflite", "thin.tflite"], "android_aarch64_benchmark_model",
    ...             threads=(1, 4))  # doctest: +SKIP
    """
    if shutil.which(adb) is None:
        raise AdbError(f"adb was not found on PATH. Received: adb={adb!r}")
    for p in [binary, *paths]:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"No such file. Received: path={os.fspath(p)!r}")
    state = _adb(adb, serial, "get-state", timeout=30).strip()
    if state != "device":
        raise AdbError(f"No device is ready (adb get-state). Received: state={state!r}")
    _adb(adb, serial, "shell", "mkdir", "-p", DEVICE_DIR)
    remote_bin = f"{DEVICE_DIR}/benchmark_model"
    _adb(adb, serial, "push", os.fspath(binary), remote_bin)
    _adb(adb, serial, "shell", "chmod", "755", remote_bin)
    remote = {}
    for p in paths:
        remote[p] = f"{DEVICE_DIR}/{os.path.basename(os.fspath(p))}"
        _adb(adb, serial, "push", os.fspath(p), remote[p])
    logs, failed = [], []
    for t in threads:
        for p in paths:
            cmd = [remote_bin, f"--graph={remote[p]}", f"--num_threads={int(t)}",
                   f"--num_runs={int(runs)}", f"--warmup_runs={int(warmup)}",
                   f"--use_xnnpack={'true' if xnnpack else 'false'}"]
            try:
                log = _adb(adb, serial, "shell", shlex.join(cmd))
                parse_runs(log)  # a log without a finished run is a failure of this model
                logs.append(log)
            except (AdbError, ValueError) as e:
                failed.append((p, t, " ".join(str(e).split())))
    machine = {"device": _adb(adb, serial, "shell", "getprop", "ro.product.model").strip(),
               "soc": _adb(adb, serial, "shell", "getprop", "ro.board.platform").strip(),
               "abi": _adb(adb, serial, "shell", "getprop", "ro.product.cpu.abi").strip()}
    if logs:
        result = parse_log("\n".join(logs), local_models=paths, machine=machine)
    else:
        result = {"schema_version": SCHEMA_VERSION, "machine": machine,
                  "settings": {"speedup_basis": None}, "models": []}
    for p, t, err in failed:
        e = dict.fromkeys(ENTRY_KEYS)
        e.update(path=remote[p], name=os.path.basename(os.fspath(p)), threads=int(t),
                 error=err)
        result["models"].append(e)
    order = {remote[p]: i for i, p in enumerate(paths)}
    result["models"].sort(key=lambda e: (order.get(e["path"], len(order)), e["threads"]))
    for e in result["models"]:  # report the local paths
        for p, r in remote.items():
            if e["path"] == r:
                e["path"] = os.fspath(p)
    result["settings"].update(runs=runs, warmup=warmup, threads=list(threads),
                              kernels="xnnpack" if xnnpack else "builtin",
                              source="benchmark_model (adb)")
    return result
