"""Model conversion, calibration, post-training quantization configs, save/load."""
from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "QuantConfig": ".base",
        "config_from_dict": ".base",
        "quantize_model": ".convert",
        "memory_footprint": ".convert",
        "Int8Config": ".llm_int8",
        "FP8Config": ".ptq",
        "Int8StaticConfig": ".ptq",
        "calibrate": ".calibration",
        "save_quantized": ".serialization",
        "load_quantized": ".serialization",
        "load_quantized_from_float": ".streaming",
    },
)
