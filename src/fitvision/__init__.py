"""fitvision: train image classifiers fast and well.

Public API only; importing fitvision does no work beyond defining names.
"""

__version__ = "0.1.0"

from fitvision.errors import FitVisionError

__all__ = ["FitVisionError", "__version__"]
