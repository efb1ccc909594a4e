"""Drop-in modules: `Linear8bitLt` (LLM.int8()), `LinearFP8` / `LinearInt8Static` (post-training
quantization), `StableEmbedding`, `Embedding8bit`, `Embedding`."""
from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "QuantizedLinear": ".base",
        "Linear8bitLt": ".linear8bitlt",
        "LinearFP8": ".linear_static",
        "LinearInt8Static": ".linear_static",
        "StableEmbedding": ".embedding",
        "Embedding8bit": ".embedding8bit",
        "Embedding": ".embedding8bit",
    },
)
