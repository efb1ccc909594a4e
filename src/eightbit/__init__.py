"""eightbit: 8-bit transformers in PyTorch (native CPU kernels; Triton CUDA kernels, tested under Triton's
interpreter, not yet run on a GPU).

LLM.int8() inference (`Int8Config`, `eightbit.nn.Linear8bitLt`), 8-bit optimizers (`eightbit.optim`),
FP8 and static INT8 post-training quantization (`FP8Config`, `Int8StaticConfig`), all through one entry
point: ``eightbit.quantize_model(model, config)``. Importing the package is light: submodules load on use.
"""
from ._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # subpackages
        "functional": ".functional",
        "kernels": ".kernels",
        "nn": ".nn",
        "optim": ".optim",
        "quantize": ".quantize",
        "integrations": ".integrations",
        "analysis": ".analysis",
        "models": ".models",
        # one entry point for every method
        "QuantConfig": ".quantize.base",
        "quantize_model": ".quantize.convert",
        "memory_footprint": ".quantize.convert",
        "Int8Config": ".quantize.llm_int8",
        "FP8Config": ".quantize.ptq",
        "Int8StaticConfig": ".quantize.ptq",
        "calibrate": ".quantize.calibration",
        "save_quantized": ".quantize.serialization",
        "load_quantized": ".quantize.serialization",
        "load_quantized_from_float": ".quantize.streaming",
    },
)

# PEFT learns eightbit's LoRA layer when it is imported (no PEFT import here: it costs seconds)
from .integrations._peft_hook import install as _install_peft_hook  # noqa: E402

_install_peft_hook()
