"""tf-beam-inference: Beam pipelines for batch and streaming inference with TF SavedModels.

Also what Dataflow workers install (--setup_file ./setup.py).
"""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def requirements():
    with open(os.path.join(HERE, "requirements.txt")) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


setup(
    name="tf-beam-inference",
    version="0.1.0",
    description="Apache Beam pipelines for batch and streaming inference with TensorFlow SavedModels",
    packages=find_packages(include=["models", "models.*", "transforms", "transforms.*", "pipelines", "pipelines.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=requirements(),
    license="Apache-2.0",
)
