"""Python entry point of the tfmot baselines: runs `python -m tflite_bench.baselines` in a
separate process (tfmot switches the whole process to Keras 2 when imported) and returns its
manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ARCHS = ("lenet", "mlp", "convnet", "resnet20", "resnet32")


class BaselineError(RuntimeError):
    """The baselines process failed; the message is its one-line error."""


def make_baselines(arch, sparsity, out, weights=None, data=None, filters=None, steps=100,
                   batch_size=64, overwrite=False, seed=0, kinds=None, timeout=1800):
    """Builds tfmot magnitude-pruning baselines of an architecture as .tflite files.

    The architecture is rebuilt with tf_keras from `examples.models` (the same builder as the
    Keras 3 model), pruned element-wise at `sparsity` and 2:4 with tfmot, and exported with and
    without the EXPERIMENTAL_SPARSITY converter flag, next to the unpruned model. Runs in a
    subprocess; this process never imports tfmot.

    Args:
        arch: one of `ARCHS`.
        sparsity: element-wise sparsity in (0, 1), e.g. 0.9.
        out: output folder (created if missing).
        weights: optional Keras 3 .keras file to start from (its layer widths are used).
        data: optional .npz with x_train, y_train, x_test, y_test: fine-tune `steps` steps
            after pruning and report accuracy; without it the pruning is one-shot.
        filters: optional LeNet conv widths, e.g. (3, 12) (otherwise read from `weights`).
        steps: fine-tuning steps when `data` is given.
        batch_size: fine-tuning batch size.
        overwrite: replace existing files in `out`.
        seed: random seed.
        kinds: the pruned files to write, among "elementwise", "elementwise_sparseflag",
            "2of4", "2of4_sparseflag" (default: all four; the dense file is always written).
        timeout: seconds before the subprocess is killed.

    Returns:
        The manifest dict (also written to `out/baselines.json`): the files written, their
        measured weight sparsity, the pruning mode, and accuracies when data was given.

    Raises:
        ValueError: for a bad argument.
        BaselineError: if the subprocess fails.

    Example:

    >>> m = make_baselines("lenet", 0.9, "/tmp/baselines")  # doctest: +SKIP
    >>> [f["file"] for f in m["files"]]  # doctest: +SKIP
    """
    if arch not in ARCHS:
        raise ValueError(f"Unknown architecture. Expected one of {ARCHS}. Received: "
                         f"arch={arch!r}")
    if not 0 < float(sparsity) < 1:
        raise ValueError(f"`sparsity` must be in (0, 1). Received: sparsity={sparsity}")
    cmd = [sys.executable, "-m", "tflite_bench.baselines", f"--arch={arch}",
           f"--sparsity={float(sparsity)}", f"--out={os.fspath(out)}", f"--steps={int(steps)}",
           f"--batch_size={int(batch_size)}", f"--seed={int(seed)}"]
    if weights:
        cmd.append(f"--weights={os.fspath(weights)}")
    if data:
        cmd.append(f"--data={os.fspath(data)}")
    if filters:
        cmd.append(f"--filters={','.join(str(int(f)) for f in filters)}")
    if overwrite:
        cmd.append("--overwrite")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        cmd.append(f"--kinds={','.join(kinds)}")
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        lines = [x for x in p.stderr.splitlines() if x.startswith("tflite_bench.baselines")]
        tail = lines[-1] if lines else (p.stderr.strip().splitlines() or ["?"])[-1]
        raise BaselineError(f"The baselines process failed (exit code {p.returncode}): {tail}")
    with open(os.path.join(os.fspath(out), "baselines.json"), encoding="utf-8") as f:
        return json.load(f)
