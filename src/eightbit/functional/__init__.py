"""Pure tensor functions: quantize/dequantize (vector-wise, block-wise, fp8, affine int8), int8 matmul,
LLM.int8() matmul, code maps. Reference versions in plain PyTorch; fast paths come from `eightbit.kernels`.
Nothing here knows about modules."""
from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        # vector-wise int8 (LLM.int8())
        "quantize_vectorwise": ".vectorwise",
        "dequantize_vectorwise": ".vectorwise",
        "int8_mm": ".int8",
        "int8_linear": ".int8",
        "outlier_columns": ".int8",
        # block-wise (8-bit optimizers)
        "create_dynamic_map": ".codes",
        "create_linear_map": ".codes",
        "create_quantile_map": ".codes",
        "quantize_blockwise": ".blockwise",
        "dequantize_blockwise": ".blockwise",
        "BlockwiseState": ".blockwise",
        # fp8 and affine int8 (post-training quantization)
        "quantize_fp8": ".fp8",
        "dequantize_fp8": ".fp8",
        "FP8_FORMATS": ".fp8",
        "quantize_int8": ".affine",
        "dequantize_int8": ".affine",
    },
)
