"""`StableEmbedding` (Dettmers et al., 2021): Xavier-uniform init, LayerNorm on the output, and 32-bit
optimizer state for its weight (registered with `eightbit.optim.GlobalOptimManager`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StableEmbedding"]


class State32bit:
    """Mixin of embedding modules whose ``weight`` always gets 32-bit optimizer state from eightbit optimizers
    (a ``GlobalOptimManager`` override, registered at construction and again when the module is rebuilt by
    ``copy.deepcopy`` or pickle, which skip ``__init__``: bitsandbytes' modules lose the override there)."""

    def _register_override(self) -> None:
        from ..optim.manager import GlobalOptimManager

        GlobalOptimManager.get_instance().register_module_override(self, "weight", {"optim_bits": 32})

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._register_override()


class StableEmbedding(State32bit, nn.Embedding):
    """Embedding for stable 8-bit training of language models.

    Same arguments as ``torch.nn.Embedding`` (``num_embeddings, embedding_dim, padding_idx=None, ...``).
    Output: ``LayerNorm(embedding(ids))`` of shape ``ids.shape + (embedding_dim,)`` in the weight's dtype.
    The weight is Xavier-uniform initialized (the padding row zeroed) and always gets 32-bit optimizer state
    from eightbit optimizers, whatever their ``optim_bits``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
            _weight, device=device, dtype=dtype,
        )
        self.norm = nn.LayerNorm(embedding_dim, device=device, dtype=dtype)
        self._register_override()

    def reset_parameters(self) -> None:
        """Xavier-uniform weight; the padding row (if any) is zero."""
        nn.init.xavier_uniform_(self.weight)
        self._fill_padding_idx_with_zero()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """(...) int64 ids -> (..., embedding_dim) layer-normalized embeddings."""
        emb = F.embedding(
            input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )
        return self.norm(emb)
