"""Maps the top-level ``architectures/`` folder to the ``mtt.architectures`` package.

Every sub-folder of ``architectures/`` becomes ``mtt.architectures.<name>`` without being listed
anywhere: adding an architecture touches only its folder.
"""

from setuptools import find_namespace_packages, find_packages, setup

# namespace discovery: folders holding only data (tests/checkpoints) are packages too, or
# recent setuptools warns at every install that they would be left out
architectures = ["mtt.architectures"] + [
    f"mtt.architectures.{name}"
    for name in find_namespace_packages("architectures", exclude=["*__pycache__*"])
]

setup(
    packages=find_packages("src") + architectures,
    package_dir={"": "src", "mtt.architectures": "architectures"},
)
