"""Writing benchmark results: JSON, a Markdown table and a PNG bar chart, all atomically."""

from __future__ import annotations

import json
import os
import stat
import tempfile


def atomic_write(path, data, overwrite=False):
    """Writes bytes or text to `path` through a temporary file and `os.replace`.

    Args:
        path: destination file.
        data: `bytes` or `str` (written as UTF-8).
        overwrite: allow replacing an existing file.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
        OSError: if the file cannot be written (the message names `path`, not the temporary
            file; nothing is left behind).

    Example:

    >>> atomic_write("/tmp/x.md", "# table\\n", overwrite=True)  # doctest: +SKIP
    """
    write_files({path: data}, overwrite)


def write_files(contents, overwrite=False):
    """Writes several files atomically and all together: each through a temporary file in its
    folder, all temporary files first, then each put into place (a new file with a hard link,
    which fails if another writer created the path meanwhile; a replaced one with
    `os.replace`).

    If anything fails, the temporary files are removed, and so are the files this call created;
    files that existed before are only replaced once every new file is fully written, and get
    their old content back if a later replacement fails (each is kept as a hard link, or a
    copy, until all are in place).

    Args:
        contents: {path: bytes or str (written as UTF-8)}.
        overwrite: allow replacing existing files.

    Raises:
        FileExistsError: if a path exists and `overwrite` is False (nothing is written).
        OSError: if a file cannot be written; the message names the destination.
    """
    items = [(os.fspath(p), d) for p, d in contents.items()]
    for path, _ in items:
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"The output file exists; pass overwrite=True (--overwrite) "
                                  f"to replace it. Received: path={path!r}")
    staged, done = [], []
    try:
        for path, data in items:
            staged.append((_stage(path, data), path))
        for tmp, path in staged:
            existed = os.path.lexists(path)
            if existed and not overwrite:  # appeared since the check above
                raise FileExistsError(f"The output file exists; pass overwrite=True "
                                      f"(--overwrite) to replace it. Received: path={path!r}")
            backup = _backup(path) if existed else None
            try:
                if existed:
                    os.replace(tmp, path)
                else:
                    _link_new(tmp, path)
            except OSError as e:
                if backup is not None:
                    _remove_quietly(backup)
                if isinstance(e, FileExistsError):
                    raise
                raise _named(e, path) from None
            done.append((path, backup))
    except BaseException:
        for tmp, _ in staged:
            _remove_quietly(tmp)
        for path, backup in reversed(done):
            if backup is None:
                _remove_quietly(path)
            else:
                try:
                    os.replace(backup, path)
                except OSError:
                    pass
        raise
    for _, backup in done:
        if backup is not None:
            _remove_quietly(backup)


def _link_new(tmp, path):
    """Publishes `tmp` as the new file `path`: a hard link, which fails if `path` appeared
    meanwhile (another writer's file is never replaced), else (no hard links here) a rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"The output file appeared while writing; pass overwrite=True "
                              f"(--overwrite) to replace it. Received: path={path!r}") from None
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(f"The output file appeared while writing; pass "
                                  f"overwrite=True (--overwrite) to replace it. Received: "
                                  f"path={path!r}") from None
        os.replace(tmp, path)
        return
    _remove_quietly(tmp)


def _temp_prefix(path, tag):
    """A hidden temporary name next to `path`, short enough for any file name (a long name
    plus a prefix and suffix would pass the file system's 255-byte limit)."""
    short = os.fsencode(os.path.basename(path))[:64].decode(errors="ignore")  # 64 bytes
    return f".{short}.{tag}-"


def _backup(path):
    """A second name for the existing file `path` (a hard link, else a copy), next to it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, backup = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path, "old"))
    os.close(fd)
    os.remove(backup)
    try:
        os.link(path, backup)
    except OSError:
        import shutil

        try:
            shutil.copy2(path, backup)
        except OSError as e:
            _remove_quietly(backup)
            raise _named(e, path) from None
    return backup


def _stage(path, data):
    """Writes `data` to a new temporary file next to `path`; returns the temporary path."""
    directory = os.path.dirname(os.path.abspath(path))
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path, "tmp"))
    except OSError as e:
        raise _named(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _mode(path))  # mkstemp creates 0600
    except BaseException as e:
        _remove_quietly(tmp)
        if isinstance(e, OSError):
            raise _named(e, path) from None
        raise
    return tmp


def _named(error, path):
    """An OSError of the same type whose message names the destination `path`."""
    reason = error.strerror or " ".join(str(error).split())
    return type(error)(f"Cannot write the output file ({reason}). Received: path={path!r}")


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _mode(path):
    """The mode `open(path, "w")` leaves: a replaced file's own, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


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


def _cell(text) -> str:
    """`text` for a markdown table cell: a "|" (a file name, an error's dtype) is escaped."""
    return str(text).replace("|", "\\|")


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
    ci_name = f"{round(conf * 100, 4):g}% CI" if conf else "CI"  # 99.5% is not "100%"
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
        name = _cell(e.get("name") or os.path.basename(e["path"]))
        if e.get("error"):
            lines.append(f"| {name} | {e['threads']} | error: {_cell(e['error'])} "
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

    All contents are made first (the plot included), then written together (`write_files`):
    if one file cannot be written, none of the new files is left behind.

    Args:
        result: a benchmark result dict.
        json_path: where to write the JSON, or None.
        markdown_path: where to write the Markdown table, or None.
        plot_path: where to write the PNG chart, or None.
        overwrite: allow replacing existing files.

    Raises:
        FileExistsError: if a destination exists and `overwrite` is False.
        ValueError, OSError: see `check_outputs`; OSError if a file cannot be written.

    Example:

    >>> write_outputs(result, json_path="out.json", markdown_path="out.md")  # doctest: +SKIP
    """
    named = {"json_path": json_path, "markdown_path": markdown_path, "plot_path": plot_path}
    check_outputs(named, overwrite)
    contents = {}
    if json_path is not None:
        contents[json_path] = to_json(result)
    if markdown_path is not None:
        contents[markdown_path] = to_markdown(result)
    if plot_path is not None:
        contents[plot_path] = plot_png(result)
    write_files(contents, overwrite)


def check_outputs(paths, overwrite=False, inputs=()):
    """Raises before any work if an output path cannot be written.

    Each output must be a non-empty file path (not ending with a path separator), not an
    existing directory or other non-regular file, not existing at all unless `overwrite`, in an
    existing folder where a file can be created; the outputs must be distinct files, and none
    may be one of `inputs`.

    Args:
        paths: output paths, as a list (None entries are ignored) or as a dict
            {label: path or None}; the labels (e.g. "--json") name the paths in messages.
        overwrite: allow existing files.
        inputs: paths the run reads (they may not be overwritten by an output).

    Raises:
        ValueError: an empty path, a path ending with a separator, two outputs naming the same
            file, or an output that is an input.
        IsADirectoryError: an output is an existing directory.
        FileExistsError: an output exists and `overwrite` is False (or it is not a regular
            file).
        FileNotFoundError: an output's folder does not exist.
        NotADirectoryError: an output's folder is a file.
        PermissionError, OSError: no file can be created in an output's folder.
    """
    if isinstance(paths, dict):
        items = [(label, p) for label, p in paths.items() if p is not None]
    else:
        items = [("path", p) for p in paths if p is not None]
    seen = {}
    reads = {os.path.realpath(os.fspath(p)): os.fspath(p) for p in inputs}
    probed = set()
    for label, p in items:
        p = os.fspath(p)
        got = f"Received: {label}={p!r}"
        if not p:
            raise ValueError(f"{label} is empty. Expected: a file path. {got}")
        if p.endswith((os.sep, "/")) or (os.altsep and p.endswith(os.altsep)):
            raise ValueError(f"{label} ends with a path separator, so it names a folder. "
                             f"Expected: a file path. {got}")
        if os.path.isdir(p):
            raise IsADirectoryError(f"{label} is an existing directory. Expected: a file path "
                                    f"(a new file, or an existing file with --overwrite). {got}")
        if os.path.exists(p) and not os.path.isfile(p):
            raise FileExistsError(f"{label} exists and is not a regular file. Expected: a "
                                  f"file path. {got}")
        if os.path.lexists(p) and not overwrite:
            raise FileExistsError(f"The output file exists; pass --overwrite to replace it. "
                                  f"{got}")
        real = os.path.realpath(p)
        if real in reads:
            raise ValueError(f"{label} is also an input of this run; it would be overwritten. "
                             f"Expected: a different path. {got}")
        if real in seen:
            other, q = seen[real]
            raise ValueError(f"{other} and {label} name the same file. Expected: distinct "
                             f"output paths. Received: {other}={q!r}, {label}={p!r}")
        seen[real] = (label, p)
        d = os.path.dirname(os.path.abspath(p))
        if not os.path.exists(d):
            raise FileNotFoundError(f"The output folder does not exist. Expected: a path in "
                                    f"an existing folder. {got}")
        if not os.path.isdir(d):
            raise NotADirectoryError(f"The output folder {d!r} is a file. Expected: a path in "
                                     f"an existing folder. {got}")
        if d not in probed:
            _probe_folder(d, got)
            probed.add(d)


def _probe_folder(d, got):
    """Raises if no file can be created in folder `d` (creates and removes one to be sure)."""
    if not os.access(d, os.W_OK | os.X_OK):
        raise PermissionError(f"The output folder {d!r} is not writable. Expected: a path in a "
                              f"writable folder. {got}")
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-probe-")
    except OSError as e:
        reason = e.strerror or " ".join(str(e).split())
        raise type(e)(f"No file can be created in the output folder {d!r} ({reason}). "
                      f"Expected: a path in a writable folder. {got}") from None
    os.close(fd)
    _remove_quietly(tmp)
