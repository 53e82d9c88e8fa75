"""Build script: the Cython extension modules (see fastloss/_cy)."""
from setuptools import setup

setup()
