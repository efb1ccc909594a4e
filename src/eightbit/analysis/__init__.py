"""Outlier-feature and quantization-error analysis."""
from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {"find_outlier_features": ".outliers", "OutlierReport": ".outliers", "compare_models": ".fidelity",
     "Fidelity": ".fidelity"},
)
