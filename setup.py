"""ssl_keras: Structured Sparsity Learning for Keras 3, with thinning, TFLite export and a
CPU latency benchmark.

Extras:
  bench  tensorflow-model-optimization + tf-keras (the element-wise pruning baseline, run in
         its own process)
  plot   matplotlib (plots in the benchmark and the examples)
  test   pytest, pytest-xdist, hypothesis, jax (backend-equivalence test), scipy (the
         t-intervals of examples.summary) and everything above

ai-edge-litert (the LiteRT interpreter) is a core dependency: export_tflite counts ops and
verifies outputs with it, and tflite_bench runs .tflite files with it.
"""
from setuptools import find_packages, setup

TF = "tensorflow==2.21.*"
LITERT = "ai-edge-litert==2.3.*"
BENCH = [
    "tensorflow-model-optimization==0.8.1",
    "tf-keras==2.21.*",
]
PLOT = ["matplotlib>=3.7"]
TEST = ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "jax>=0.4.30",
        "ruff>=0.5", "scipy>=1.10"] + BENCH + PLOT

setup(
    name="ssl_keras",
    version="0.1.0",
    description="Structured Sparsity Learning (group Lasso, thinning, TFLite export) for Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ssl_keras", "ssl_keras.*", "tflite_bench", "tflite_bench.*"]),
    install_requires=[TF, "keras>=3.15,<4", "numpy>=1.26", "absl-py>=1.4", LITERT],
    extras_require={"bench": BENCH, "plot": PLOT, "test": TEST, "all": TEST},
    license="Apache-2.0",
)
