"""Post-training quantized linear layers: `LinearFP8` (FP8-BERT) and `LinearInt8Static` (static INT8),
two thin names for one class, `LinearStatic`, parameterized by the target format (`QuantSpec`).

Storage: ``weight`` codes one byte per value (torch float8 dtype, or int8) + ``weight_scale`` (per output
channel ``(out,)`` or per tensor ``()``), symmetric. Static activations: ``input_scale`` /
``input_zero_point`` / ``calibrated`` buffers (persistent, so a calibrated model round-trips through
``state_dict`` and ``save_quantized``), set by ``eightbit.calibrate``; running an uncalibrated static layer
raises RuntimeError. Dynamic activations (FP8 only): a scale per token, computed on the fly.

Compute. Symmetric INT8 with static activations and float32 compute runs a real int8 GEMM: the input's
int8 codes times the int8 weight, summed exactly in int32 (the ``int8_matmul_dequant`` op), scaled by
``input_scale * weight_scale``; the result is the simulated-quantization product without its float32
summation error (the two scales enter as ``(s * 127) / 127``, the op's absmax form, within one ulp of s).
FP8 runs the ``fp8_linear`` op on the codes: a real FP8 GEMM where the device has one (CUDA FP8 tensor cores; on
CPUs with AVX-512 BF16 a GEMM on the codes as bfloat16, exact products and float32 sums), else its reference,
the dequantized product. Every other format (asymmetric uint8, float64/bf16 compute) is simulated
quantization, as in the paper: the input is quantized then dequantized with its scale, and the GEMM runs in
``compute_dtype`` on the dequantized weight. The dequantized weight is never
cached: it is rebuilt each call in chunks of at most ``CHUNK_ELEMENTS`` values (16 MB in fp32), so the layer
keeps its 1-byte footprint at the cost of one dequantization pass per forward. Bias stays in float;
Softmax/GELU/LayerNorm around the layer are untouched.

Gradients. Weights and bias are frozen buffers. An input that requires grad gets the straight-through gradient
``grad @ dequantized_weight`` (the activation rounding taken as identity, as bitsandbytes' int8 backward does), so
earlier layers (LoRA adapters, a float head, input saliency) train through the layer; the quantized ops themselves
have no autograd, and without this the input's gradient was silently None.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import FLOAT_DTYPES, check_bool, check_choice, check_number, check_positive_int, check_tensor
from ..functional.affine import check_scale, finite_minmax
from ..functional.fp8 import fp8_bits, get_format
from ..functional.fp8_linear import fp8_linear
from ..functional.int8 import int8_matmul_dequant
from ..functional.vectorwise import INT8_MAX
from .observers import OBSERVERS, MinMaxObserver, Observer, QuantSpec, make_observer
from .base import QuantizedLinear

CHUNK_ELEMENTS = 1 << 22
QUANTIZE_CHUNK_ELEMENTS = 1 << 20  # float scratch per step of set_weight (4 MB in fp32)


class _StraightThrough(torch.autograd.Function):
    """``layer``'s quantized forward; backward: ``grad @ layer.dequantized_weight()`` for the input only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "LinearStatic") -> torch.Tensor:
        ctx.layer = layer
        return layer._quantized_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantized_weight().to(grad.dtype), None


class LinearStatic(QuantizedLinear):
    """Linear layer with 8-bit weights and statically (or dynamically) quantized activations.

    ``spec``: the activation/weight format (weights always use its symmetric version).
    ``weight_granularity``: "channel" (per output row) or "tensor". ``activation``: "static" (calibrated
    per-tensor scale) or "dynamic" (per-token scale; FP8 only). ``calibration``: observer name for static
    activations ("minmax", "percentile", "entropy", "mse"); weights always use absmax (minmax).
    Input (..., in_features) float; output (..., out_features) in the input dtype.
    """

    fixed_dtype_buffers = ("weight", "weight_scale", "input_scale")  # codes and float32 scales

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        spec: QuantSpec,
        weight_granularity: str = "channel",
        activation: str = "static",
        calibration: str = "minmax",
        percentile: float = 99.99,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        check_bool(bias, "bias")
        check_choice(weight_granularity, "weight_granularity", ("channel", "tensor"))
        check_choice(activation, "activation", ("static", "dynamic"))
        check_choice(calibration, "calibration", tuple(OBSERVERS))
        check_choice(compute_dtype, "compute_dtype", FLOAT_DTYPES)
        check_number(percentile, "percentile", low=0.0, high=100.0, low_inclusive=False)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.spec = spec
        self.weight_spec = QuantSpec(spec.kind, spec.format, symmetric=True)
        self.weight_granularity, self.activation = weight_granularity, activation
        self.calibration, self.percentile, self.compute_dtype = calibration, float(percentile), compute_dtype
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=self.weight_spec.storage_dtype, device=device))
        scale_shape = (out_features,) if weight_granularity == "channel" else ()
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        if activation == "static":
            self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
            self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32, device=device))
            self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool, device=device))
        # Python copy of the ``calibrated`` buffer: read under torch.compile (a guard, not a data-dependent branch)
        self._calibrated_flag = False
        self._observer: Observer | None = None

    # construction ---------------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, **options) -> "LinearStatic":
        """Quantize ``linear``'s weight (absmax per channel or tensor); options as in ``__init__``."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device, **options)
        layer.set_weight(linear.weight, linear.bias)
        return layer

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Quantize and store a float ``weight`` (out_features, in_features) and copy ``bias``."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must have shape {(self.out_features, self.in_features)}, got {tuple(weight.shape)}")
        weight = weight.detach()
        if weight.device.type != "meta" and weight.numel():  # (a meta weight has no values to check)
            lo, hi = torch.aminmax(weight)  # NaN propagates; no temporary of the weight's size
            if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):  # NaN -> 0, Inf -> the top code
                raise ValueError("weight holds NaN or Inf; a quantized layer needs a finite weight")
        axis = 0 if self.weight_granularity == "channel" else None
        obs = MinMaxObserver(self.weight_spec, axis=axis)
        # min/max of the whole tensor do not depend on its layout: observe a transposed view (Conv1D) as its
        # contiguous transpose, else the observer's reshape would copy the whole matrix
        obs.observe(weight.t() if axis is None and weight.dim() == 2 and weight.t().is_contiguous() else weight)
        scale, _ = obs.qparams()
        # quantize in row chunks straight into the codes buffer: no float or code temporary of the whole
        # matrix (a streaming load holds the incoming weight already). Scales are per row or one for all: exact.
        rows = max(1, QUANTIZE_CHUNK_ELEMENTS // max(1, self.in_features))
        for r0 in range(0, self.out_features, rows):
            s = scale[r0 : r0 + rows] if axis == 0 else scale
            self.weight[r0 : r0 + rows] = self.weight_spec.quantize(weight[r0 : r0 + rows], s, axis=axis)
        self.weight_scale.copy_(scale)
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias.detach().float())

    # calibration ----------------------------------------------------------------------------------
    @property
    def needs_calibration(self) -> bool:
        """True for static activations (a scale must come from calibration)."""
        return self.activation == "static"

    @property
    def is_calibrated(self) -> bool:
        """True when the static activation scale is set (always True for dynamic activations)."""
        return not self.needs_calibration or self._calibrated_now()

    def _calibrated_now(self) -> bool:
        if torch.compiler.is_compiling() or self.calibrated.is_meta:
            return self._calibrated_flag
        self._calibrated_flag = bool(self.calibrated)  # eager: the buffer is the truth (it may be set directly)
        return self._calibrated_flag

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # torch's loader casts a buffer of another dtype silently: FP8 codes loaded into an int8 layer (or the
        # reverse, or E5M2 into E4M3) would become other numbers. Codes of another format are refused instead.
        weight = state_dict.get(prefix + "weight")
        if isinstance(weight, torch.Tensor) and weight.dtype != self.weight.dtype:
            error_msgs.append(f"{prefix}weight: codes of dtype {weight.dtype} cannot be loaded into this "
                              f"{type(self).__name__}, whose weight format stores {self.weight.dtype} (a checkpoint "
                              "of another quantization format: load it into a layer of that format)")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.needs_calibration and not self.calibrated.is_meta:
            self._calibrated_flag = bool(self.calibrated)

    def start_observing(self) -> None:
        """Enter observing mode: forward records inputs and runs with unquantized activations."""
        if not self.needs_calibration:
            raise RuntimeError("this layer uses dynamic activation scales: nothing to calibrate")
        self._observer = make_observer(self.calibration, self.spec, percentile=self.percentile)

    @torch.no_grad()
    def finish_observing(self) -> bool:
        """Freeze the activation scale from the observations; False (layer left as it was) if it saw none."""
        obs, self._observer = self._observer, None
        if obs is None or not obs.has_data:
            return False
        scale, zero_point = obs.qparams()
        self.input_scale.copy_(scale)
        self.input_zero_point.copy_(zero_point)
        self.calibrated.fill_(True)
        self._calibrated_flag = True
        return True

    # compute --------------------------------------------------------------------------------------
    def dequantized_weight(self) -> torch.Tensor:
        """The weight as float32 (out_features, in_features) (allocates)."""
        return self._weight_rows(0, self.out_features, torch.float32)

    def _weight_rows(self, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        per_channel = self.weight_granularity == "channel"
        scale = self.weight_scale[start:stop] if per_channel else self.weight_scale
        return self.weight_spec.dequantize(self.weight[start:stop], scale, axis=0 if per_channel else None, dtype=dtype)

    def _require_calibrated(self) -> None:
        if not self._calibrated_now():
            raise RuntimeError(
                "static activation scales are not calibrated: run eightbit.calibrate(model, batches) after "
                "quantize_model (or load a calibrated checkpoint) before running the model"
            )

    def _int8_gemm(self) -> bool:
        """True where the forward is a real int8 GEMM (see the module docstring)."""
        return (self.spec.kind == "int8" and self.spec.symmetric and self.activation == "static"
                and self.compute_dtype == torch.float32)

    def _int8_forward(self, x: torch.Tensor) -> torch.Tensor:
        self._require_calibrated()
        rows = x.reshape(-1, self.in_features).float()  # (M, K)
        codes = self.spec.quantize(rows, self.input_scale)  # int8 (M, K), the same codes as the simulated path
        x_absmax = (self.input_scale.float() * INT8_MAX).expand(rows.shape[0]).contiguous()
        w_absmax = (self.weight_scale.float() * INT8_MAX).expand(self.out_features).contiguous()
        out = int8_matmul_dequant(codes, x_absmax, self.weight, w_absmax)  # float32 (M, N)
        if self.bias is not None:
            out.add_(self.bias.float())  # in place: out of place it allocated an (M, N) tensor, 0.2 ms a call here
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _checked_input_scale(self) -> torch.Tensor:
        """The static input scale, checked positive and finite once per value (not on every call: the check is
        a device sync); a checkpoint or a direct write with a bad scale raises here instead of saturating."""
        s = self.input_scale
        # (not while torch.jit.trace records: a check made on its first run only would make its runs differ)
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or s.is_meta:
            return s
        key = (-1 if s.is_inference() else s._version, s.data_ptr())
        if getattr(self, "_input_scale_key", None) != key:
            check_scale(s, s, None, "input_scale")
            self._input_scale_key = key
        return s

    def _fp8_forward(self, x: torch.Tensor) -> torch.Tensor:
        """FP8 activations and weight through the ``fp8_linear`` op (a real FP8 GEMM where the device has one)."""
        rows = x.reshape(-1, self.in_features)  # (M, K)
        if self.activation == "static":
            self._require_calibrated()
            scale, axis = self._checked_input_scale(), None
        else:  # one scale per token, from its finite values (always positive and finite)
            scale, _ = self.spec.qparams(*finite_minmax(rows, 0))
            axis = 0
        fmt = get_format(self.spec.format)
        codes = fp8_bits(rows, fmt, scale, axis, True)  # uint8 (a view as float8 would stop torch.jit.trace)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        out = fp8_linear(codes, scale, self.weight, self.weight_scale, bias, fp8_dtype=fmt.dtype,
                         dtype=self.compute_dtype)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        cd = self.compute_dtype
        if self.activation == "static":
            self._require_calibrated()
            return self.spec.fake_quantize(x, self.input_scale, self.input_zero_point, dtype=cd)
        rows = x.reshape(-1, self.in_features)  # (tokens, in): one scale per token
        scale, zero_point = self.spec.qparams(*finite_minmax(rows, 0))
        return self.spec.fake_quantize(rows, scale, zero_point, axis=0, dtype=cd).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a float input only: integer, complex or float8 activations would be cast silently (float8 ones come from
        # models that cast activations to the weight's dtype, e.g. T5's feed-forward)
        check_tensor(x, "x", dtypes=FLOAT_DTYPES + (torch.float64,))
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input last dim must be {self.in_features}, got shape {tuple(x.shape)}")
        if self._observer is None and x.requires_grad and torch.is_grad_enabled():
            return _StraightThrough.apply(x, self)
        return self._quantized_forward(x)

    def _quantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observer is not None:  # calibrating: float input, fake-quantized weight (differentiable)
            self._observer.observe(x)
            xq = x.to(self.compute_dtype)
        elif self._int8_gemm():
            return self._int8_forward(x)
        elif self.spec.kind == "fp8":
            return self._fp8_forward(x)
        else:
            xq = self._quantize_input(x)
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        rows = max(1, CHUNK_ELEMENTS // max(1, self.in_features))
        if rows >= self.out_features:
            out = F.linear(xq, self._weight_rows(0, self.out_features, self.compute_dtype), bias)
        else:
            out = xq.new_empty(*xq.shape[:-1], self.out_features)
            for r0 in range(0, self.out_features, rows):
                r1 = min(r0 + rows, self.out_features)
                out[..., r0:r1] = F.linear(xq, self._weight_rows(r0, r1, self.compute_dtype), None if bias is None else bias[r0:r1])
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        act = f"activation={self.activation}" + (f", calibration={self.calibration}" if self.activation == "static" else "")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.spec.name}, weight_granularity={self.weight_granularity}, {act}")


class LinearFP8(LinearStatic):
    """FP8 post-training quantized linear (FP8-BERT): ``format`` one of ``eightbit.functional.FP8_FORMATS``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, format: str = "e4m3", **options) -> None:
        super().__init__(in_features, out_features, bias, spec=QuantSpec("fp8", format), **options)


class LinearInt8Static(LinearStatic):
    """Static INT8 post-training quantized linear: symmetric int8 (or asymmetric uint8) activations with a
    calibrated per-tensor scale, symmetric int8 weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, symmetric: bool = True, **options) -> None:
        if options.get("activation", "static") != "static":
            raise ValueError("LinearInt8Static only supports activation='static'")
        super().__init__(in_features, out_features, bias, spec=QuantSpec("int8", symmetric=check_bool(symmetric, "symmetric")),
                         **options)
