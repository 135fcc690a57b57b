"""Side-by-side CPU latency of .tflite models: worker processes, interleaved rounds, statistics.

Each model gets its own long-lived worker process (`tflite_bench._worker`, which never imports
TensorFlow). For each thread count, every worker loads its model (init time, first inference,
warmup), then the parent drives rounds: in each round every model runs `round_size` invokes in
turn, in an order shuffled per round, so that machine noise falls on all models alike.

Speedups are ratios of medians against the first model at the same thread count, with a
paired bootstrap confidence interval over rounds (the same resampled rounds for both models).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

from tflite_bench import model_info as _info
from tflite_bench._worker import KERNELS

SCHEMA_VERSION = 1

#: Keys of every entry of `result["models"]`, in order.
ENTRY_KEYS = (
    "path", "name", "size_bytes", "params", "macs", "threads", "median_us", "p10_us", "p90_us",
    "mean_us", "std_us", "min_us", "runs", "init_ms", "first_us", "speedup_vs_first",
    "speedup_ci", "mac_ratio_vs_first", "efficiency", "error",
)


def machine_info():
    """The machine the benchmark runs on: CPU model, cores, Python and LiteRT versions.

    Returns:
        A dict with `cpu`, `cores`, `available_cores`, `platform`, `python`, `numpy`,
        `litert`.

    Example:

    >>> machine_info()["cores"] >= 1
    True
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import ai_edge_litert

        litert = getattr(ai_edge_litert, "__version__", "unknown")
    except ImportError:
        litert = None
    available = (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else list(range(os.cpu_count() or 1)))
    return {"cpu": cpu, "cores": os.cpu_count(), "available_cores": available,
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "litert": litert}


def summarize(times_us):
    """Per-invoke statistics of a list of times in microseconds.

    Args:
        times_us: per-invoke times (us).

    Returns:
        A dict: `median_us`, `p10_us`, `p90_us`, `mean_us`, `std_us` (population), `min_us`,
        `runs`. Percentiles use NumPy's default (linear) interpolation.

    Example:

    >>> summarize([1.0, 2.0, 3.0])["median_us"]
    2.0
    """
    t = np.asarray(times_us, dtype=np.float64)
    if t.size == 0:
        raise ValueError("No times to summarize. Received: times_us=[]")
    return {"median_us": float(np.median(t)), "p10_us": float(np.percentile(t, 10)),
            "p90_us": float(np.percentile(t, 90)), "mean_us": float(t.mean()),
            "std_us": float(t.std()), "min_us": float(t.min()), "runs": int(t.size)}


def speedup_ci(base_rounds, other_rounds, resamples=1000, confidence=0.95, seed=0):
    """Paired bootstrap confidence interval of median(base) / median(other) over rounds.

    Each resample draws round indices with replacement and pools the same rounds of both
    models, so noise that hit one round hits both sides of the ratio.

    Args:
        base_rounds: list of per-round lists of times of the baseline model.
        other_rounds: the same for the other model (same number of rounds).
        resamples: number of bootstrap resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seed of the resampling.

    Returns:
        `[low, high]`, floats.

    Example:

    >>> lo, hi = speedup_ci([[4.0, 4.1]] * 5, [[2.0, 2.1]] * 5)
    >>> 1.9 < lo <= hi < 2.1
    True
    """
    if len(base_rounds) != len(other_rounds) or not base_rounds:
        raise ValueError(
            "Both models need the same, non-zero number of rounds. "
            f"Received: {len(base_rounds)} and {len(other_rounds)} rounds."
        )
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    rng = np.random.default_rng(seed)
    base = [np.asarray(r, np.float64) for r in base_rounds]
    other = [np.asarray(r, np.float64) for r in other_rounds]
    n = len(base)
    ratios = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        ratios[b] = (np.median(np.concatenate([base[i] for i in idx]))
                     / np.median(np.concatenate([other[i] for i in idx])))
    alpha = (1 - confidence) / 2
    return [float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))]


class WorkerError(RuntimeError):
    """A worker process failed or died."""


class _Worker:
    """One timing process (see tflite_bench._worker)."""

    def __init__(self):
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tflite_bench._worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, env=env)

    def call(self, **msg):
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.proc.wait()
            self._stderr.seek(0)
            tail = [x for x in self._stderr.read().decode(errors="replace").splitlines()
                    if x.strip()]
            raise WorkerError(f"the worker process died (exit code {code})"
                              + (f": {tail[-1].strip()}" if tail else ""))
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(reply["error"])
        return reply

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


class _Progress:
    """A bar redrawn in place (carriage returns) on a terminal; elsewhere (a log file, a
    pipe) a line at every 10%, so that logs hold no carriage-return debris."""

    def __init__(self, total, enabled, stream=None):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._last = -1

    def step(self, n, label):
        self.done += n
        if not self.enabled:
            return
        pct = int(100 * self.done / self.total)
        shown = pct if self.tty else pct // 10 * 10
        if shown == self._last and self.done < self.total:
            return
        self._last = shown
        bar = "#" * (pct * 30 // 100)
        if self.tty:
            self.stream.write(f"\r[{bar:<30}] {pct:3d}% {label[:40]:<40}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"[{bar:<30}] {pct:3d}% {label[:40]}\n")
        self.stream.flush()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_args(paths, threads, runs, warmup, round_size, kernels, cores, seed=0,
                resamples=1000, confidence=0.95):
    if isinstance(paths, (str, os.PathLike)) or not paths:
        raise ValueError(f"`paths` must be a non-empty list of .tflite paths. Received: "
                         f"paths={paths!r}")
    real = [os.path.realpath(os.fspath(p)) for p in paths]
    if len(set(real)) != len(real):
        raise ValueError(f"`paths` lists the same model more than once (its timings would be "
                         f"pooled). Expected: each model once. Received: paths={paths!r}")
    if (isinstance(threads, (str, bytes)) or not threads
            or any(not _is_int(t) or t < 1 for t in threads)):
        raise ValueError(f"`threads` must be a list of positive integers. Received: "
                         f"threads={threads!r}")
    if len(set(threads)) != len(threads):
        raise ValueError(f"`threads` lists a thread count more than once. Expected: distinct "
                         f"values. Received: threads={threads!r}")
    if (not all(_is_int(v) for v in (runs, warmup, round_size))
            or runs < 1 or warmup < 0 or round_size < 1):
        raise ValueError("`runs` and `round_size` must be integers >= 1 and `warmup` an "
                         f"integer >= 0. Received: runs={runs!r}, warmup={warmup!r}, "
                         f"round_size={round_size!r}")
    if not _is_int(seed) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"`seed` must be an integer in [0, 2**32). Received: seed={seed!r}")
    if not _is_int(resamples) or resamples < 1:
        raise ValueError(f"`resamples` must be an integer >= 1. Received: "
                         f"resamples={resamples!r}")
    if isinstance(confidence, (bool, np.bool_)) or not isinstance(
            confidence, (int, float, np.floating)) or not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be a number in (0, 1). Received: "
                         f"confidence={confidence!r}")
    if kernels not in KERNELS:
        raise ValueError(f"`kernels` must be one of {KERNELS}. Received: kernels={kernels!r}")
    if cores is not None and (not cores or any(not _is_int(c) or c < 0 for c in cores)):
        raise ValueError(f"`cores` must be a non-empty list of core ids or None. Received: "
                         f"cores={cores!r}")
    if cores is not None and hasattr(os, "sched_getaffinity"):
        usable = os.sched_getaffinity(0)
        if not set(cores) <= usable:
            raise ValueError(f"`cores` must be cores this process may run on, among "
                             f"{sorted(usable)}. Received: cores={cores!r}")


def display_names(paths) -> dict:
    """{path: name} for tables and plots: the file name, with as many parent folders as it
    takes to tell apart models whose file names are the same (d1/m.tflite, d2/m.tflite)."""
    parts = {p: os.path.normpath(os.path.abspath(os.fspath(p))).split(os.sep) for p in paths}
    names = {}
    for p, segs in parts.items():
        depth = 1
        while depth < len(segs) and any(
                q != p and other[-depth:] == segs[-depth:] for q, other in parts.items()):
            depth += 1
        names[p] = "/".join(segs[-depth:])
    return names


def _entry(path, threads, info, error=None, name=None):
    e = dict.fromkeys(ENTRY_KEYS)
    e.update(path=os.fspath(path), name=name or os.path.basename(os.fspath(path)),
             threads=threads, error=error)
    if info is not None:
        e.update(size_bytes=info["size_bytes"], params=info["params"], macs=info["macs"])
    return e


def add_ratios(entries):
    """Fills `mac_ratio_vs_first` and `efficiency` of entries, in place; returns them.

    The first model (the first path seen) is the baseline at each thread count:
    `mac_ratio_vs_first = macs(first) / macs(model)` (how many times fewer MACs) and
    `efficiency = speedup_vs_first / mac_ratio_vs_first` (1.0: latency fell as much as MACs).

    Args:
        entries: the `models` list of a result dict.

    Returns:
        The same list.

    Example:

    >>> e = add_ratios([{"path": "a", "threads": 1, "macs": 10, "speedup_vs_first": 1.0},
    ...                 {"path": "b", "threads": 1, "macs": 5, "speedup_vs_first": 1.5}])
    >>> e[1]["mac_ratio_vs_first"], e[1]["efficiency"]
    (2.0, 0.75)
    """
    if not entries:
        return entries
    first = entries[0]["path"]
    base = {e["threads"]: e for e in entries if e["path"] == first}
    for e in entries:
        b = base.get(e["threads"])
        if b and b.get("macs") and e.get("macs"):
            e["mac_ratio_vs_first"] = b["macs"] / e["macs"]
            if e.get("speedup_vs_first") is not None:
                e["efficiency"] = e["speedup_vs_first"] / e["mac_ratio_vs_first"]
    return entries


def benchmark(paths, threads=(1,), runs=200, warmup=20, round_size=10, kernels="xnnpack",
              cores=None, seed=0, progress=True, resamples=1000, confidence=0.95):
    """Measures the CPU latency of .tflite models side by side.

    Args:
        paths: .tflite files; the first is the baseline for speedups and MAC ratios.
        threads: thread counts to measure each model with.
        runs: timed invokes per model and thread count.
        warmup: untimed invokes after the first inference.
        round_size: invokes per model per round (rounds are interleaved across models).
        kernels: "xnnpack" (default delegate), "builtin" (TFLite's optimized built-in kernels
            without XNNPACK) or "reference" (the reference kernels).
        cores: core ids to pin the workers to (None: the cores this process may use).
        seed: seed of the random inputs, the round order and the bootstrap.
        progress: draw a progress bar on stderr.
        resamples: bootstrap resamples for the speedup interval.
        confidence: coverage of the speedup interval.

    Returns:
        A dict `{"schema_version", "machine", "settings", "models"}`, one entry in `models` per
        model and thread count with the keys `ENTRY_KEYS` (times in us, init in ms; fields that
        could not be measured are None and `error` says why). See tflite_bench/README.md.

    Example:

    >>> r = benchmark(["dense.tflite", "thin.tflite"], threads=(1, 2))  # doctest: +SKIP
    >>> r["models"][1]["speedup_vs_first"], r["models"][1]["speedup_ci"]  # doctest: +SKIP
    (4.7, [4.5, 4.9])
    """
    if not isinstance(threads, (str, bytes, list, tuple)) and hasattr(threads, "__iter__"):
        threads = tuple(threads)  # a generator is read once
    _check_args(paths, threads, runs, warmup, round_size, kernels, cores, seed, resamples,
                confidence)
    threads = tuple(int(t) for t in threads)
    paths = [os.fspath(p) for p in paths]
    infos, errors = {}, {}
    for p in paths:
        try:
            infos[p] = _info.model_info(p)
        except (OSError, ValueError) as e:
            errors[p] = " ".join(str(e).split())
    valid = [p for p in paths if p not in errors]
    n_rounds = math.ceil(runs / round_size)
    rng = np.random.default_rng(seed)
    bar = _Progress(len(valid) * len(threads) * (runs + warmup + 1), progress)
    workers = {}
    names = display_names(paths)
    entries = {(p, t): _entry(p, t, infos.get(p), errors.get(p), names[p])
               for t in threads for p in paths}
    rounds = {}
    tf_imported, affinity = False, None
    try:
        for p in valid:
            workers[p] = _Worker()
        for t in threads:
            live = []
            for p in valid:
                try:
                    r = workers[p].call(cmd="load", path=p, threads=t, kernels=kernels,
                                        warmup=warmup, seed=seed, cores=cores)
                    entries[p, t].update(init_ms=r["init_ms"], first_us=r["first_us"])
                    tf_imported |= bool(r["tensorflow_imported"])
                    affinity = r["affinity"]
                    live.append(p)
                    rounds[p, t] = []
                except WorkerError as e:
                    entries[p, t]["error"] = str(e)
                    if workers[p].proc.poll() is not None:  # it died: replace it
                        workers[p] = _Worker()
                bar.step(warmup + 1, f"{os.path.basename(p)} load, {t} thread(s)")
            for r in range(n_rounds):
                n = min(round_size, runs - r * round_size)
                for i in rng.permutation(len(live)):
                    p = live[i]
                    if entries[p, t]["error"]:
                        continue
                    try:
                        rounds[p, t].append(workers[p].call(cmd="run", n=n)["times_us"])
                    except WorkerError as e:
                        entries[p, t]["error"] = str(e)
                        workers[p] = _Worker()
                    bar.step(n, f"{os.path.basename(p)}, {t} thread(s), round {r + 1}")
    finally:
        for w in workers.values():
            w.close()
    for (p, t), rs in rounds.items():
        if not entries[p, t]["error"]:
            entries[p, t].update(summarize([x for r in rs for x in r]))
    base = paths[0]
    for t in threads:
        b = entries[base, t]
        for p in paths:
            e = entries[p, t]
            if e["error"] or b["error"]:
                continue
            e["speedup_vs_first"] = b["median_us"] / e["median_us"]
            if p != base and len(rounds[base, t]) < 2:
                continue  # one round: resampling rounds says nothing (runs <= round_size)
            e["speedup_ci"] = speedup_ci(rounds[base, t], rounds[p, t], resamples, confidence,
                                         seed)
    models = add_ratios([entries[p, t] for p in paths for t in threads])
    settings = {"threads": list(threads), "runs": runs, "warmup": warmup,
                "round_size": round_size, "rounds": n_rounds, "kernels": kernels,
                "cores": list(cores) if cores is not None else None, "seed": seed,
                "bootstrap_resamples": resamples, "confidence": confidence,
                "speedup_basis": "median", "source": "litert-python",
                "worker_affinity": affinity, "workers_imported_tensorflow": tf_imported}
    return {"schema_version": SCHEMA_VERSION, "machine": machine_info(), "settings": settings,
            "models": models}
