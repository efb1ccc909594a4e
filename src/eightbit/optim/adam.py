"""Adam (Kingma & Ba) with 8-bit or 32-bit block-wise state; same math as torch.optim.Adam."""
from __future__ import annotations

from typing import Any, Iterable


from .base import WD_L2, Optimizer8bit, bit_variants, paged_variants

__all__ = ["Adam", "Adam8bit", "Adam32bit", "PagedAdam", "PagedAdam8bit", "PagedAdam32bit"]


class Adam(Optimizer8bit):
    """Adam; ``optim_bits=8`` keeps m (signed dynamic code) and v (unsigned) block-wise in 8 bits.

    ``params, lr, betas, eps, weight_decay, amsgrad`` bind positionally as in torch and bitsandbytes; the rest is
    keyword-only (see Optimizer8bit for the shared options). weight_decay is L2 (added to the gradient) as in
    torch.optim.Adam. ``amsgrad=True`` raises ValueError (as bitsandbytes' 8-bit Adam)."""

    weight_decay_mode = WD_L2
    update_rule = "adam"

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        optim_bits: int | None = None,
        min_8bit_size: int = 4096,
        percentile_clipping: float = 100,
        max_unorm: float = 0.0,
        blocksize: int = 2048,
        nonfinite: str = "skip_block",
        state_code: str = "auto",
        stochastic_rounding: bool = True,
        args: None = None,
        is_paged: bool = False,
    ) -> None:
        if amsgrad:
            raise ValueError(f"{type(self).__name__} does not support amsgrad=True")
        super().__init__(params, dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, optim_bits=optim_bits,
            min_8bit_size=min_8bit_size, percentile_clipping=percentile_clipping, max_unorm=max_unorm,
            blocksize=blocksize, nonfinite=nonfinite, state_code=state_code,
            stochastic_rounding=stochastic_rounding,
            args=args, is_paged=is_paged,  # bitsandbytes' keywords (Optimizer8bit)
        ))

    def state_spec(self, config: dict[str, Any]):
        return (("exp_avg", True), ("exp_avg_sq", False))

    def hyper(self, config: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = config["betas"]  # complements and bias corrections in float64, rounded once by the op
        bc = config.get("bias_correction", True)
        return dict(beta1=b1, one_minus_beta1=1 - b1, beta2=b2, one_minus_beta2=1 - b2, eps=config["eps"],
                    bias_correction1=1 - b1**step if bc else 1.0,
                    bias_correction2_sqrt=(1 - b2**step) ** 0.5 if bc else 1.0)


Adam8bit, Adam32bit = bit_variants(Adam)
PagedAdam, PagedAdam8bit, PagedAdam32bit = paged_variants(Adam, Adam8bit, Adam32bit)
