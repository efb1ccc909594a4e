"""PEFT integration: LoRA adapters on a frozen 8-bit base: ``eightbit.nn.Linear8bitLt`` (LLM.int8()), ``LinearFP8``
or ``LinearInt8Static`` (8-bit fine-tuning).

Importing this module (``import eightbit`` does it when PEFT is imported) makes every ``peft.LoraConfig`` created
afterwards map those layers to ``LoraLinear8bitLt`` through PEFT's custom-module mechanism
(``LoraConfig._register_custom_module``)::

    import eightbit.integrations.peft  # noqa: F401  (registers the LoRA layer)
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(int8_model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))

A ``LoraConfig`` built before the import needs ``register_lora_layers(config)``.

The base layer is never changed by training: its 8-bit weight and scales stay bit-identical; only the
float LoRA matrices get gradients (through an FP8 / static INT8 base as its straight-through input gradient).
``merge()`` folds the adapter into the 8-bit weight (dequantize, add ``B @ A * scaling``, quantize again in
the layer's own format: one extra rounding, so merged outputs differ from the unmerged ones by about the
quantization error; a static layer keeps its calibrated input scale); ``unmerge()`` restores the original
8-bit layer exactly (it is kept aside while merged).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..nn.linear8bitlt import Linear8bitLt
from ..nn.linear_static import LinearStatic

__all__ = ["LoraLinear8bitLt", "register_lora_layers"]


class LoraLinear8bitLt(nn.Module, LoraLayer):
    """LoRA layer wrapping a frozen 8-bit linear layer (``Linear8bitLt``, ``LinearFP8``, ``LinearInt8Static``):
    ``y = base(x) + B(A(dropout(x))) * scaling``.

    Built by PEFT (``get_peft_model``), not by hand. Plain LoRA only: DoRA, aLoRA, Arrow and VeLoRA
    raise ValueError. Input [..., in_features] in any float dtype; output in the base layer's dtype.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0, lora_alpha: int = 1, **kwargs: Any) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        # A plain list keeps the stashed layer out of state_dict while merged.
        self._unmerged_base: list[nn.Module] = []
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> None:
        try:
            variant = super().resolve_lora_variant(config=config, **kwargs)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__} supports plain LoRA only (no DoRA, aLoRA, Arrow, VeLoRA): {e}") from e
        if variant is not None:  # pragma: no cover - the default mapping only knows plain LoRA
            raise ValueError(f"{type(self).__name__} supports plain LoRA only")
        return None

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """float32 [out_features, in_features] update ``B @ A * scaling`` of ``adapter``."""
        a = self.lora_A[adapter].weight.float()
        b = self.lora_B[adapter].weight.float()
        return (b @ a) * self.scaling[adapter]

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the adapters into the 8-bit base weight (re-quantized; see the module doc).

        ``safe_merge``: raise ValueError, leaving the layer unchanged, when the merged weight is not finite."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [a for a in adapter_names if a in self.lora_A]
        if not adapter_names:
            return
        base = self.get_base_layer()
        weight = base.dequantized_weight().float()  # (out, in)
        bias = None if base.bias is None else base.bias.detach().float().clone()
        for name in adapter_names:
            weight = weight + self.get_delta_weight(name)
            if self.lora_bias[name]:
                if bias is None:
                    raise ValueError(f"adapter {name!r} has a LoRA bias but the base layer has none: cannot merge it")
                bias = bias + self.lora_B[name].bias.float()
        if safe_merge and not (torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())):
            raise ValueError(f"NaN/Inf in the merged weights: adapter(s) {adapter_names} seem broken")
        merged = _requantize(base, weight, bias)
        if not self._unmerged_base:
            self._unmerged_base.append(base)
        self.base_layer = merged
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Restore the exact 8-bit base layer from before the first ``merge`` (all merged adapters)."""
        if not self.merged:
            return
        current = self.get_base_layer()
        self.base_layer = self._unmerged_base.pop().to(current.weight.device)
        self.merged_adapters.clear()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        result_dtype = result.dtype
        for active in self.active_adapters:
            if active not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[active], self.lora_B[active]
            h = self._cast_input_dtype(x, lora_a.weight.dtype)
            result = result + (lora_b(lora_a(self.lora_dropout[active](h))) * self.scaling[active]).to(result_dtype)
        return result

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def _requantize(base: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A new layer of ``base``'s class and options holding ``weight`` [out, in] (and ``bias``)."""
    if isinstance(base, LinearStatic):  # a copy keeps the format, options and calibrated input scale
        new = copy.deepcopy(base)
        new.set_weight(weight, bias)
        return new.requires_grad_(False)
    lin = nn.Linear(base.in_features, base.out_features, bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.to(_float_dtype(base)), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(base.bias.dtype), requires_grad=False)
    new = type(base).from_linear(lin, **_layer_options(base))
    new.train(base.training)
    return new.requires_grad_(False)


def _float_dtype(base: nn.Module) -> torch.dtype:
    if base.bias is not None:
        return base.bias.dtype
    return getattr(base, "compute_dtype", None) or torch.float32


def _layer_options(base: nn.Module) -> dict[str, Any]:
    """The ``from_linear`` options that rebuild a layer like ``base``."""
    return {"threshold": base.threshold} if hasattr(base, "threshold") else {}


def register_lora_layers(config: LoraConfig) -> LoraConfig:
    """Map ``Linear8bitLt`` and ``LinearStatic`` (``LinearFP8``, ``LinearInt8Static``) to ``LoraLinear8bitLt`` in
    ``config`` (done automatically for configs made after importing this module). Returns ``config``."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a peft.LoraConfig, got {type(config).__name__}")
    config._register_custom_module({Linear8bitLt: LoraLinear8bitLt, LinearStatic: LoraLinear8bitLt})
    return config


def _install() -> None:
    original = LoraConfig.__post_init__
    if getattr(original, "_eightbit_registers", False):
        return

    def __post_init__(self: LoraConfig, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        register_lora_layers(self)

    __post_init__._eightbit_registers = True  # type: ignore[attr-defined]
    LoraConfig.__post_init__ = __post_init__


_install()
