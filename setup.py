"""Maps the top-level ``architectures/`` folder to the ``mtt.architectures`` package.

Every sub-folder of ``architectures/`` becomes ``mtt.architectures.<name>`` without being listed
anywhere: adding an architecture touches only its folder.
"""

from setuptools import find_packages, setup

architectures = ["mtt.architectures"] + [
    f"mtt.architectures.{name}" for name in find_packages("architectures")
]

setup(
    packages=find_packages("src") + architectures,
    package_dir={"": "src", "mtt.architectures": "architectures"},
)
