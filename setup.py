"""qdedup: find duplicate questions in large question corpora with Apache Beam.

Install torch first (`pip install torch==2.13.0` on CPU machines, a CUDA build on GPU
workers): an unpinned torch requirement would otherwise pull a multi-GB CUDA wheel.
"""
from setuptools import find_packages, setup

setup(
    name="qdedup",
    version="0.1.0",
    description="Batch deduplication of question corpora: FAISS blocking, cross-encoder scoring, groups",
    python_requires=">=3.11",  # the version the tests run on (and the worker image has)
    packages=find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*"]),
    package_data={"transforms": ["calibration_pairs.csv"]},  # --precision int8's default calibration set
    install_requires=[
        # One Beam release: the worker image's (Dockerfile), which the launcher must match on Dataflow, and the one
        # whose local runner `pipelines/local_runner.py` adjusts. A newer release is taken deliberately, the image
        # with it (the suite passes under 2.78.0 but for the test holding the launcher to the image).
        "apache-beam==2.77.0",
        "torch>=2.1",
        "transformers>=4.45",
        "pyarrow>=15",
        "faiss-cpu>=1.8",
        "numpy>=1.24",
        "pyyaml>=6",
        "scipy>=1.10",  # sparse lexical search, the one-worker cut's component search, evaluate --sheet's intervals
    ],
    extras_require={
        # --precision int8 on CPU workers: OpenVINO runs the model, NNCF quantizes it (benchmarks/README.md)
        "int8": ["openvino>=2025.1", "nncf>=2.16"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "openvino>=2025.1", "nncf>=2.16"],
        "gcp": ["apache-beam[gcp]==2.77.0"],
    },
    entry_points={"console_scripts": ["qdedup=pipelines.cli:main"]},
)
