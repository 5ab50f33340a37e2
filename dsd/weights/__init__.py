"""Reading and writing DSD weights: the authors' release, the adapter format, layouts, diffs."""

from .errors import WeightsError

__all__ = ["WeightsError"]
