"""The packaging configuration is pyproject.toml; this file only adds the data packages discovery cannot find."""

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_PACKAGES = ("edgekd._data.targets", "edgekd._data.devices", "edgekd._data.calibration")


class BuildPy(build_py):
    """Discovery finds packages under edgekd/; the data folders at the top of the checkout join here."""

    def finalize_options(self):
        dist = self.distribution
        dist.packages = [*dist.packages, *(p for p in DATA_PACKAGES if p not in dist.packages)]
        super().finalize_options()


setup(cmdclass={"build_py": BuildPy})
