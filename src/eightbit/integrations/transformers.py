"""Hugging Face transformers integration: eightbit 8-bit linears through ``from_pretrained``.

Importing this module registers the quantization method ``"eightbit"`` with transformers' public
quantizer registry (``register_quantization_config`` / ``register_quantizer``)::

    import eightbit.integrations.transformers as ebt
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=ebt.EightbitConfig("llm_int8"))
    model.save_pretrained(out)             # int8/fp8 codes + scales in safetensors, config in config.json
    AutoModelForCausalLM.from_pretrained(out)   # needs the import above too; identical outputs

Loading a float checkpoint quantizes while it loads: transformers materialises one weight at a time,
and each selected ``nn.Linear``/``Conv1D`` weight goes straight through ``get_quantize_ops`` into the
eightbit layer that replaces the (meta-device) float layer, so the full float model never exists in
memory. A saved quantized checkpoint gets the 8-bit layers before loading and reads its stored codes
and scales directly (no re-quantization).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..quantize.base import QuantConfig, config_from_dict
from ..quantize.convert import as_linear, is_conv1d, is_linear_like, put_layer, replace_layers

QUANT_METHOD = "eightbit"
METHODS = ("llm_int8", "fp8", "int8_static")

__all__ = ["EightbitConfig", "EightbitHfQuantizer", "QUANT_METHOD", "METHODS", "from_pretrained_streaming"]


class EightbitConfig(QuantizationConfigMixin):
    """transformers ``quantization_config`` for eightbit (``quant_method="eightbit"`` in config.json).

    ``method``: ``"llm_int8"`` (LLM.int8(), ``eightbit.Int8Config``), ``"fp8"`` (``eightbit.FP8Config``) or
    ``"int8_static"`` (``eightbit.Int8StaticConfig``; fp8/int8_static need ``eightbit.calibrate`` after
    loading when they use static activation scales). ``**options`` are the fields of that config
    (e.g. ``threshold=6.0`` for llm_int8, ``format="e4m3"`` for fp8); they are validated at once.
    ``skip_modules``: name patterns of linear layers kept in float (fnmatch on the full dotted name or a
    dotted suffix, e.g. ``"lm_head"``, ``"encoder.layer.0.*"``, of the layer or of a module above it, so
    ``"vision_tower"`` keeps every layer under it in float). ``None`` (default) keeps transformers'
    usual choice in float: the output embedding (``lm_head``), tied weights and the last layer.
    Tied weights are never quantized, whatever ``skip_modules`` says.

    Raises ValueError for an unknown method or option.
    """

    def __init__(self, method: str = "llm_int8", *, skip_modules: list[str] | tuple[str, ...] | None = None, **options: Any):
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        if skip_modules is not None:
            if isinstance(skip_modules, str) or not all(isinstance(p, str) for p in skip_modules):
                raise ValueError(f"skip_modules must be a list of name patterns (str) or None, got {skip_modules!r}")
            skip_modules = list(skip_modules)
        options.pop("quant_method", None)  # present when rebuilt from config.json
        if "skip_modules" in options:
            raise ValueError("pass skip_modules once, as EightbitConfig(skip_modules=...)")
        self.quant_method = QUANT_METHOD
        self.method = method
        self.skip_modules = skip_modules
        # Build once to validate options now (not halfway through loading); kept in JSON form.
        self.options = {k: v for k, v in _inner_config(method, options).to_dict().items() if k not in ("method", "skip_modules")}

    def eightbit_config(self, extra_skips: list[str] | tuple[str, ...] = ()) -> QuantConfig:
        """The eightbit ``QuantConfig`` this config stands for, with ``extra_skips`` added to its skips."""
        skips = tuple(self.skip_modules or ()) + tuple(extra_skips)
        return _inner_config(self.method, self.options, skips)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-safe dict, as stored under ``quantization_config`` in config.json."""
        return {"quant_method": QUANT_METHOD, "method": self.method, "skip_modules": copy.deepcopy(self.skip_modules), **copy.deepcopy(self.options)}

    def __iter__(self):
        yield from self.to_dict().items()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EightbitConfig) and self.to_dict() == other.to_dict()

    @classmethod
    def from_bitsandbytes(cls, bnb_config: Any) -> "EightbitConfig":
        """The LLM.int8() config equivalent to a transformers ``BitsAndBytesConfig(load_in_8bit=True, ...)`` (or its
        ``to_dict()``): ``llm_int8_threshold`` -> ``threshold``, ``llm_int8_skip_modules`` -> ``skip_modules`` (the
        same patterns cover the same layers). ValueError for what has no LLM.int8() meaning here: 4-bit loading,
        ``llm_int8_has_fp16_weight=True`` (trainable float weights: use ``eightbit.nn.Linear8bitLt(...,
        has_fp16_weights=True)`` directly) or a config that does not load in 8 bits."""
        d = bnb_config.to_dict() if hasattr(bnb_config, "to_dict") else bnb_config
        if not isinstance(d, dict):
            raise TypeError(f"bnb_config must be a BitsAndBytesConfig or its dict, got {type(bnb_config).__name__}")
        if d.get("load_in_4bit") or d.get("_load_in_4bit"):
            raise ValueError("load_in_4bit has no eightbit equivalent: eightbit quantizes to 8 bits")
        if not (d.get("load_in_8bit") or d.get("_load_in_8bit")):
            raise ValueError("bnb_config does not load in 8 bits (load_in_8bit=False)")
        if d.get("llm_int8_has_fp16_weight"):
            raise ValueError("llm_int8_has_fp16_weight=True is not supported through from_pretrained: use "
                             "eightbit.nn.Linear8bitLt(..., has_fp16_weights=True)")
        skips = d.get("llm_int8_skip_modules")
        return cls("llm_int8", skip_modules=None if skips is None else list(skips),
                   threshold=float(d.get("llm_int8_threshold", 6.0)))

    @property
    def is_trainable(self) -> bool:
        """True when adapters can be trained on top of the layers (LLM.int8() passes gradients to its input)."""
        return self.method == "llm_int8"


def from_pretrained_streaming(
    path: Any, quantization_config: "EightbitConfig | QuantConfig | None" = None, *,
    keep_non_linear_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load a float Hugging Face checkpoint directory straight into 8-bit with a bounded memory peak.

    The transformers-side door to `eightbit.load_quantized_from_float` (the same loader; its peak is
    measured in the tests and docs/streaming.md): the model is built from ``AutoConfig.from_pretrained(path)``
    on the meta device (as the class named by its ``architectures``, the class it was saved from) and the
    safetensors shards are read tensor by tensor. ``quantization_config``: an
    ``EightbitConfig`` (default ``EightbitConfig("llm_int8")``; with ``skip_modules=None`` the output
    embedding ``lm_head`` stays in float, as through ``from_pretrained``) or any eightbit ``QuantConfig``.
    Returns the model in eval mode. Raises what `load_quantized_from_float` raises.
    """
    from transformers import AutoConfig

    from ..quantize.streaming import load_quantized_from_float

    qc = EightbitConfig("llm_int8") if quantization_config is None else quantization_config
    if isinstance(qc, EightbitConfig):
        qc = qc.eightbit_config(["lm_head"] if qc.skip_modules is None else [])
    elif not isinstance(qc, QuantConfig):
        raise TypeError(f"quantization_config must be an EightbitConfig or an eightbit QuantConfig, got {type(qc).__name__}")
    config = AutoConfig.from_pretrained(path)
    model = load_quantized_from_float(path, _saved_architecture(config) or config, qc,
                                      keep_non_linear_dtype=keep_non_linear_dtype)
    return model.eval()


def _saved_architecture(config: Any) -> Callable[[], nn.Module] | None:
    """A factory of the class the checkpoint was saved from (``config.architectures[0]``), or None: a BertModel
    checkpoint must not become the BertLMHeadModel that ``AutoModelForCausalLM.from_config`` makes of its config
    (other keys, no pooler)."""
    import transformers

    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "_from_config"):
        from ..quantize.streaming import skip_hf_init, tie_hf_weights

        def build() -> nn.Module:
            with skip_hf_init():
                return tie_hf_weights(cls._from_config(config))

        return build
    return None


def _inner_config(method: str, options: dict[str, Any], skips: tuple[str, ...] | None = None) -> QuantConfig:
    data = {"method": method, **options}
    if skips is not None:
        data["skip_modules"] = list(skips)
    try:
        return config_from_dict(data)
    except ImportError as e:  # pragma: no cover - only while a method's module is missing
        raise ValueError(f"eightbit method {method!r} is not available: {e}") from e


def _skeleton(config: QuantConfig, linear: nn.Linear, name: str) -> nn.Module:
    """The quantized layer for meta-device ``linear``, itself on the meta device (its tensors get loaded later).

    Layers whose quantizer inspects values (``.item()``) cannot be built from meta tensors: those are built
    once from an all-zero weight on the CPU (one float layer alive at a time) and then moved to meta."""
    try:
        layer = config.make_linear(linear, name)
        if all(t.device.type == "meta" for t in list(layer.parameters()) + list(layer.buffers())):
            return layer
    except (RuntimeError, NotImplementedError):
        pass
    with torch.device("cpu"):  # transformers builds the skeleton under a default-device("meta") context
        zeros = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=linear.weight.dtype)
        nn.init.zeros_(zeros.weight)
        return config.make_linear(zeros.requires_grad_(False), name).to("meta")


def _linear_holding(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` whose weight and bias are these tensors, built without ``reset_parameters`` (whose
    initialisation of a throw-away weight cost 80 us a layer, 3 ms of a MiniLM load)."""
    lin = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(lin)
    lin.out_features, lin.in_features = weight.shape
    lin.weight = nn.Parameter(weight, requires_grad=False)
    lin.register_parameter("bias", None if bias is None else nn.Parameter(bias))
    return lin


class _QuantizeOnLoad(ConversionOps):
    """Quantizes one float weight as transformers materialises it and swaps the float (meta) layer for its
    eightbit layer; returns that layer's tensors so transformers records them as loaded."""

    def __init__(self, quantizer: "EightbitHfQuantizer"):
        self.quantizer = quantizer

    @torch.no_grad()
    def convert(self, input_dict: dict[str, Any], model: nn.Module | None = None, missing_keys: set[str] | None = None,
                **kwargs: Any) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for param_name, value in input_dict.items():
            value = value[0] if isinstance(value, list) else value
            layer_name = param_name.rpartition(".")[0]
            parent_name, _, attr = layer_name.rpartition(".")
            original = model.get_submodule(layer_name)
            if is_conv1d(original):
                value = value.t()  # Conv1D stores [in, out]
            out_features, in_features = value.shape
            bias = original.bias
            # biases load before weights (sorted keys); if this one is not there yet it loads into the new layer
            placeholder = bias is not None and bias.device.type == "meta"
            real = None
            if bias is not None:
                real = torch.zeros(out_features, dtype=bias.dtype, device=value.device) if placeholder else bias.detach()
            lin = _linear_holding(value, real)
            layer = self.quantizer.eightbit_config.make_linear(lin, layer_name)
            put_layer(model.get_submodule(parent_name) if parent_name else model, attr, layer)
            if missing_keys is not None:
                missing_keys.discard(param_name)  # consumed, even when the layer stores it under another name
            for key, tensor in layer.state_dict().items():
                if not (key == "bias" and placeholder):
                    out[f"{layer_name}.{key}"] = tensor
        return out


class EightbitHfQuantizer(HfQuantizer):
    """transformers ``HfQuantizer`` for ``EightbitConfig`` (registered as ``"eightbit"``)."""

    requires_calibration = False
    quantization_config: EightbitConfig

    def __init__(self, quantization_config: EightbitConfig, **kwargs: Any):
        super().__init__(quantization_config, **kwargs)
        self.eightbit_config: QuantConfig | None = None
        self.quantized_layers: list[str] = []
        self._quantized_set: set[str] = set()

    @property
    def quantized_element_size(self) -> float:
        return 1

    def param_needs_quantization(self, model: nn.Module, param_name: str, **kwargs: Any) -> bool:
        layer_name, _, attr = param_name.rpartition(".")
        return not self.pre_quantized and attr == "weight" and layer_name in self._quantized_set

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        # The model is a meta-device skeleton here. A float checkpoint keeps the float layers until each
        # weight arrives (_QuantizeOnLoad swaps them); a quantized checkpoint needs the 8-bit layers now,
        # so that its tensors (codes, scales) have somewhere to go.
        self.eightbit_config = self.quantization_config.eightbit_config(self._default_skips(model))
        names = [n for n, m in model.named_modules() if n and is_linear_like(m) and not self.eightbit_config.is_skipped(n)]
        if self.pre_quantized:
            modules = dict(model.named_modules())
            for name in names:
                parent_name, _, attr = name.rpartition(".")
                put_layer(modules[parent_name], attr, _skeleton(self.eightbit_config, as_linear(modules[name]), name))
        self.quantized_layers = names
        self._quantized_set = set(names)
        model._eightbit_config = self.eightbit_config
        return model

    def _default_skips(self, model: nn.Module) -> list[str]:
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        keys = {k for pair in tied.items() for k in pair}
        skips = {k.removesuffix(".weight") for k in keys}
        skips |= set(getattr(model, "_keep_in_fp32_modules", None) or [])
        if self.quantization_config.skip_modules is None:
            skips |= set(self.get_modules_to_not_convert(model, None, None))
        return sorted(skips)

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        from ..nn.base import QuantizedLinear

        # A layer whose weight was missing from the checkpoint was initialised in float: quantize it too,
        # so the saved model matches the layer list a reload rebuilds.
        leftovers = [n for n in self.quantized_layers if not isinstance(model.get_submodule(n), QuantizedLinear)]
        if leftovers:
            replace_layers(model, self.eightbit_config, leftovers)
        # transformers makes loaded float tensors trainable Parameters; quantized storage must stay frozen.
        for module in model.modules():
            if isinstance(module, QuantizedLinear):
                for name, p in module.named_parameters(recurse=False):
                    if name != "bias":
                        p.requires_grad_(False)
            # transformers fills the calibration buffers without _load_from_state_dict: refresh the Python copy of
            # "calibrated" that compiled code reads (else compile/export of a loaded calibrated model refused it)
            if getattr(module, "needs_calibration", False):
                _ = module.is_calibrated  # (the property syncs the flag from the buffer)
        model._eightbit_config = self.eightbit_config
        return model

    def get_quantize_ops(self) -> ConversionOps:
        return _QuantizeOnLoad(self)

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return self.quantization_config.is_trainable


def _register() -> None:
    # Idempotent: a second import (or a reload) must not raise "already registered".
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(EightbitConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(EightbitHfQuantizer)


_register()
