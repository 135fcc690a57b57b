"""The examples' shared pipeline: dense -> SSL -> zero -> strip -> thin -> fine-tune -> TFLite.

Every example (lenet, mlp, convnet, resnet) is a `Recipe` (architecture, dataset, default
coefficients and schedule) handed to `main`, which runs these steps:

1. data      examples.datasets.load (normalised, seeded validation split)
2. dense     train the dense baseline (SGD with momentum, or Adam); BatchNorm statistics
             re-estimated at the end, as for the SSL model
3. ssl       apply_ssl(dense) and train with group Lasso at a constant learning rate;
             BatchNorm statistics re-estimated at the end (reestimate_batchnorm)
4. finetune  zero_groups(threshold), strip_ssl, BatchNorm re-estimated; thin(model): a smaller
             dense Keras model with the same outputs (checked); fine-tune the thinned model
             (cosine learning-rate decay), BatchNorm re-estimated. With --nofinetune_thinned
             the zeroed full-size model is fine-tuned with its zero groups frozen instead
             (the paper's recipe, several times slower) and thinned afterwards
5. thin      the fine-tuned thinned model (or thin() of the fine-tuned zeroed one)
6. export    float32 TFLite of dense and thinned, int8 of thinned; outputs checked
7. tfmot     element-wise magnitude pruning at the same parameter sparsity, in its own process
8. bench     tflite_bench.benchmark: 1 and 2 threads, batch 1, interleaved
9. report    one table on stdout, results/<name>_<dataset>.json and .md, plots

Every phase saves its model to `<out_dir>/<name>_<dataset>/`; a run that was interrupted
resumes from the last finished phase, and inside a phase from the last finished epoch
(keras.callbacks.BackupAndRestore). A step whose ssl_keras / tflite_bench piece is missing
fails with an error naming it; nothing is faked.

The code: examples/config.py (Recipe, flags, Config), pipeline.py (Pipeline: the steps),
distill.py (the --distill loss and targets), report.py (table, JSON, plots), util.py (need,
atomic writes). This module is the entry: `Recipe` and `main`.

Example:
    python -m examples.lenet --quick
"""

from __future__ import annotations

import os
import sys

from absl import flags

from examples import datasets
from examples.config import Recipe, UsageError, config_from_flags, define_flags
from examples.pipeline import Pipeline
from examples.util import HELP_FLAGS, StepUnavailableError, print_help
from tflite_bench._cli import import_tensorflow, normalize

__all__ = ["HELP_FLAGS", "Recipe", "main"]



def main(recipe: Recipe, argv=None, command=None) -> int:
    """Parses flags, runs the pipeline; bad input prints one line and returns 2. `command`:
    the argv to record in the report, when it is not `argv` (an entry point that takes some
    flags out first, as examples.resnet does with --resnet_depth)."""
    argv = list(sys.argv if argv is None else argv)
    fv = define_flags(recipe)
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(a in HELP_FLAGS for a in args):
        entry = sys.modules.get("__main__")
        spec = getattr(entry, "__spec__", None)
        text = fv.get_help(include_special_flags=False).replace("examples.config:", "Flags:")
        if spec is not None and spec.name.startswith("examples."):  # python -m examples.X
            text = (entry.__doc__ or "").strip() + "\n\n" + text
        print_help(text)
        return 0
    try:
        rest = fv(normalize(argv, flag_values=fv))  # --flag-name as --flag_name
        if len(rest) > 1:
            raise UsageError(f"unexpected arguments (every setting is a --flag; see --help). "
                             f"Received: {rest[1:]}")
        cfg = config_from_flags(fv, recipe)
    except (flags.Error, UsageError) as e:
        print(f"{recipe.name}: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's oneDNN CPU kernels: on by TensorFlow's own choice (Linux) only on CPUs with
    # VNNI, AVX-512 BF16 or AMX; on an AVX2 CPU (the 2-core AMD EPYC of RESULTS.md) an epoch of
    # the dense LeNet took 14.6 s with them, 22.7 s without. Deterministic too;
    # TF_ENABLE_ONEDNN_OPTS=0 turns them off (the examples' runs there before 2026-11-27 11:00
    # ran without them). The report records what TensorFlow did.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import_tensorflow()  # TensorFlow's start-up and cuInit lines ignore the log level
    try:
        pipeline = Pipeline(recipe, cfg)
        pipeline.argv = list(argv if command is None else command)  # the report's
        pipeline.run()
    except (UsageError, datasets.DatasetNotFoundError) as e:
        print(f"{recipe.name}: error: {e}", file=sys.stderr)
        return 2
    except StepUnavailableError as e:
        print(f"{recipe.name}: error: {e}", file=sys.stderr)
        return 1
    return 0
