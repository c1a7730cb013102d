"""Octavo plugin kit: reference ops, conformance suite and plugin template."""

__version__ = "0.1.0"
