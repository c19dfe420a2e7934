"""Builds steward-client; pyproject.toml holds the metadata.

Generated code is not committed: building from the repository (a wheel, or an sdist) first runs
clients/generate.sh python, with the generators of this build's environment (pyproject.toml's
build requirements, or the dev venv with --no-build-isolation). An sdist carries the generated
code, so building from it needs no generation.
"""

import os
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATE = os.path.join(HERE, "..", "generate.sh")
PROTO = os.path.join(HERE, "..", "..", "proto")


def generate() -> None:
    if not (os.path.isfile(GENERATE) and os.path.isdir(PROTO)):
        if not os.path.isdir(os.path.join(HERE, "steward_client", "gen", "steward")):
            sys.exit("steward_client/gen is missing and the protos are not here to generate it")
        return  # an sdist: generated already
    # The generators are this build's: its python, and the scripts (buf) next to it.
    env = dict(os.environ, PYTHON=sys.executable)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    subprocess.run(["bash", GENERATE, "python"], check=True, env=env)


class BuildPy(build_py):
    def run(self):
        generate()
        # Found again now that gen/ exists.
        from setuptools import find_packages

        self.packages = find_packages(HERE, include=["steward_client*"])
        self.distribution.packages = self.packages
        super().run()


class Sdist(sdist):
    def run(self):
        generate()
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
