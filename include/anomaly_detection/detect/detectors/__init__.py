"""Detector plug-ins: every module of this package registers one or more :class:`Detector`.

``REGISTRY`` maps a name in ``modeling.algorithms`` to its detector; ``DETECTORS`` maps it to its
``detect(X, params, settings)`` function.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    REGISTRY,
    Detection,
    Detector,
    DetectorSettings,
    register,
    robust_standardise,
    sample_indices,
    top_share_labels,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
    importlib.import_module(f"{__name__}.{_module}")

DETECTORS = {name: detector.detect for name, detector in REGISTRY.items()}

__all__ = [
    "DETECTORS", "REGISTRY", "Detection", "Detector", "DetectorSettings",
    "register", "robust_standardise", "sample_indices", "top_share_labels",
]  # fmt: skip
