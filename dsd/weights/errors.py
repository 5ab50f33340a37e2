from __future__ import annotations


class WeightsError(ValueError):
    """A weights file or folder that cannot be used; the message names the file and the fix."""
