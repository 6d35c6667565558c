"""The package version, in a module of its own so that code needing it (report headers, the
REST API's description) does not import the package `__init__`, whose hooks reach the front ends."""

__version__ = "0.1.0"
