"""Pure tensor functions: quantize/dequantize (vector-wise, block-wise, fp8, affine int8), int8 matmul, the
LLM.int8() linear, code maps and the optimizer step. Each runs through an op of :mod:`.ops` (schema, fake
implementation, plain-PyTorch reference); the device kernels of ``eightbit.kernels`` register against those
ops when this package is imported. Nothing here knows about modules."""
import importlib

from . import affine, blockwise, codes, compat, fp8, fp8_linear, int8, ops, optimizer, vectorwise  # noqa: F401  (declares the ops)
from .affine import dequantize_int8, quantize_int8
from .blockwise import BlockwiseState, QuantState, dequantize_blockwise, quantize_blockwise
from .codes import create_binary_dynamic_map, create_dynamic_map, create_linear_map, create_quantile_map
from .fp8 import FP8_FORMATS, dequantize_fp8, quantize_fp8
from .compat import (create_fp8_map, int8_double_quant, int8_linear_matmul, int8_mm_dequant, int8_vectorwise_dequant,
                     int8_vectorwise_quant)
from .int8 import int8_linear, int8_linear_float_weight, int8_matmul_dequant, int8_mm, outlier_columns
from .vectorwise import dequantize_vectorwise, int8_vectorwise_quant_columns, quantize_vectorwise

# Kernels register themselves against the ops declared above (imported by name: kernels depend on functional,
# never the other way round).
importlib.import_module("eightbit.kernels")

__all__ = [
    "quantize_vectorwise", "dequantize_vectorwise", "int8_vectorwise_quant_columns", "int8_mm",
    "int8_matmul_dequant", "int8_linear", "outlier_columns", "create_dynamic_map", "create_binary_dynamic_map",
    "create_linear_map",
    "create_quantile_map", "quantize_blockwise", "dequantize_blockwise", "BlockwiseState", "quantize_fp8",
    "dequantize_fp8", "FP8_FORMATS", "quantize_int8", "dequantize_int8", "QuantState", "int8_linear_float_weight",
    # bitsandbytes' names (functional/compat.py)
    "int8_vectorwise_quant", "int8_vectorwise_dequant", "int8_double_quant", "int8_linear_matmul", "int8_mm_dequant",
    "create_fp8_map",
]
