# pyproject.toml holds the metadata; this shim keeps `python setup.py develop` and old tooling working.
from setuptools import setup

setup()
