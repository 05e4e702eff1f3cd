"""Producers of rmcs jobs. The Python helper with seed 000's API is built on `publish_job`."""

from .publish import publish_job

__all__ = ["publish_job"]
