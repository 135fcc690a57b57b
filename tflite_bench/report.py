"""Writing benchmark results: JSON, a Markdown table and a PNG bar chart, all atomically."""

from __future__ import annotations

import json
import os
import tempfile


def atomic_write(path, data, overwrite=False):
    """Writes bytes or text to `path` through a temporary file and `os.replace`.

    Args:
        path: destination file.
        data: `bytes` or `str` (written as UTF-8).
        overwrite: allow replacing an existing file.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.

    Example:

    >>> atomic_write("/tmp/x.md", "# table\\n", overwrite=True)  # doctest: +SKIP
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"The output file exists; pass overwrite=True (--overwrite) to "
                              f"replace it. Received: path={path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def to_json(result):
    """The result dict as indented JSON text (keys in their documented order)."""
    return json.dumps(result, indent=2) + "\n"


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _si(n):
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def to_markdown(result):
    """A Markdown table of a benchmark result: one row per model and thread count.

    Columns: model, threads, median / p10 / p90 latency (us), speedup vs the first model with
    its confidence interval, MACs, MAC ratio vs the first model, efficiency (speedup / MAC
    ratio), parameters, file size (KiB), init (ms). Failed entries show their error.

    Args:
        result: the dict returned by `tflite_bench.benchmark` (or `parse_log`).

    Returns:
        The table as a string, with a one-line header naming the machine and settings.

    Example:

    >>> print(to_markdown(result))  # doctest: +SKIP
    """
    m, s = result.get("machine", {}), result.get("settings", {})
    conf = s.get("confidence")
    ci_name = f"{round(conf * 100)}% CI" if conf else "CI"
    lines = [
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, LiteRT {m.get('litert', '?')}; "
        f"kernels={s.get('kernels', '?')}, runs={s.get('runs', '?')}, "
        f"warmup={s.get('warmup', '?')}, source={s.get('source', '?')}",
        "",
        f"| model | threads | median us | p10 us | p90 us | speedup ({ci_name}) | MACs | "
        "MAC ratio | efficiency | params | size KiB | init ms |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in result["models"]:
        name = e.get("name") or os.path.basename(e["path"])
        if e.get("error"):
            lines.append(f"| {name} | {e['threads']} | error: {e['error']} "
                         "| | | | | | | | | |")
            continue
        sp = _fmt(e.get("speedup_vs_first"), ".2f")
        if e.get("speedup_ci"):
            sp += f" [{e['speedup_ci'][0]:.2f}, {e['speedup_ci'][1]:.2f}]"
        size = None if e.get("size_bytes") is None else e["size_bytes"] / 1024
        lines.append(
            f"| {name} | {e['threads']} | {_fmt(e.get('median_us'), '.1f')} | "
            f"{_fmt(e.get('p10_us'), '.1f')} | {_fmt(e.get('p90_us'), '.1f')} | {sp} | "
            f"{_si(e.get('macs'))} | {_fmt(e.get('mac_ratio_vs_first'), '.2f')} | "
            f"{_fmt(e.get('efficiency'), '.2f')} | {_si(e.get('params'))} | "
            f"{_fmt(size, '.1f')} | {_fmt(e.get('init_ms'), '.2f')} |")
    return "\n".join(lines) + "\n"


def plot_png(result):
    """A PNG bar chart of the median latency per model and thread count (p10-p90 bars).

    Args:
        result: a benchmark result dict.

    Returns:
        The PNG file's bytes.

    Example:

    >>> open("bench.png", "wb").write(plot_png(result))  # doctest: +SKIP
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = result["models"]
    names = list(dict.fromkeys(e.get("name") or os.path.basename(e["path"]) for e in entries))
    threads = sorted({e["threads"] for e in entries})
    width = 0.8 / max(len(threads), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 1), 3.6), dpi=100)
    for j, t in enumerate(threads):
        xs, ys, lo, hi = [], [], [], []
        for i, n in enumerate(names):
            e = next((e for e in entries if (e.get("name") or os.path.basename(e["path"])) == n
                      and e["threads"] == t), None)
            if e is None or e.get("median_us") is None:
                continue
            xs.append(i + (j - (len(threads) - 1) / 2) * width)
            ys.append(e["median_us"])
            p10 = e.get("p10_us") if e.get("p10_us") is not None else e["median_us"]
            p90 = e.get("p90_us") if e.get("p90_us") is not None else e["median_us"]
            lo.append(e["median_us"] - p10)
            hi.append(p90 - e["median_us"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"{t} thread(s)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("median latency (us), p10-p90")
    ax.set_title("TFLite CPU latency per invoke")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(result, json_path=None, markdown_path=None, plot_path=None,
                  overwrite=False):
    """Writes the requested outputs atomically; checks every destination before writing any.

    Args:
        result: a benchmark result dict.
        json_path: where to write the JSON, or None.
        markdown_path: where to write the Markdown table, or None.
        plot_path: where to write the PNG chart, or None.
        overwrite: allow replacing existing files.

    Raises:
        FileExistsError: if a destination exists and `overwrite` is False.

    Example:

    >>> write_outputs(result, json_path="out.json", markdown_path="out.md")  # doctest: +SKIP
    """
    check_outputs([json_path, markdown_path, plot_path], overwrite)
    if json_path:
        atomic_write(json_path, to_json(result), overwrite)
    if markdown_path:
        atomic_write(markdown_path, to_markdown(result), overwrite)
    if plot_path:
        atomic_write(plot_path, plot_png(result), overwrite)


def check_outputs(paths, overwrite=False):
    """Raises before any work if an output exists (without `overwrite`) or its folder is
    missing.

    Args:
        paths: output paths (None entries are ignored).
        overwrite: allow existing files.

    Raises:
        FileExistsError: an output exists and `overwrite` is False.
        FileNotFoundError: an output's folder does not exist.
    """
    for p in paths:
        if not p:
            continue
        if os.path.exists(p) and not overwrite:
            raise FileExistsError(f"The output file exists; pass --overwrite to replace it. "
                                  f"Received: path={os.fspath(p)!r}")
        d = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(d):
            raise FileNotFoundError(f"The output folder does not exist. Received: "
                                    f"path={os.fspath(p)!r}")
