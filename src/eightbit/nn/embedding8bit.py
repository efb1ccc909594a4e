"""`Embedding8bit` (LLM.int8()'s row-wise int8 applied to an embedding table) and `Embedding` (an ``nn.Embedding``
whose weight keeps 32-bit optimizer state), under bitsandbytes' names."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import State32bit
from .linear8bitlt import quantize_weight_rows

__all__ = ["Embedding8bit", "Embedding"]


class Embedding8bit(nn.Module):
    """Embedding table stored as int8 rows with one float32 absmax per row (a quarter of the fp32 memory).

    ``Embedding8bit(num_embeddings, embedding_dim, device=None, dtype=None)`` as bitsandbytes; ``dtype`` is the
    output dtype (default float32; a float cast of the module, ``.half()`` or ``.to(torch.bfloat16)``, sets
    it). Buffers ``weight_int8`` [num, dim] and ``weight_absmax`` [num]. Loading a
    float ``weight`` (an ``nn.Embedding``'s state_dict) quantizes it at load time, so bitsandbytes' sequence
    ``Embedding8bit(...)`` -> ``load_state_dict(fp_sd)`` -> ``.to(device)`` works; ``from_embedding`` does the
    same from a module. Forward: ``(...)`` int64 ids -> ``(..., dim)`` dequantized rows (``row * absmax / 127``).
    Frozen (no gradient to the table). Unlike bitsandbytes' (which refuses), it saves to a state_dict.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.dtype = dtype or torch.float32
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_absmax", torch.zeros(num_embeddings, dtype=torch.float32, device=device))

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, emb: nn.Embedding) -> "Embedding8bit":
        """Quantize an ``nn.Embedding``'s table row-wise (ValueError if it holds NaN/Inf)."""
        if not isinstance(emb, nn.Embedding):
            raise TypeError(f"emb must be an nn.Embedding, got {type(emb).__name__}")
        out = cls(emb.num_embeddings, emb.embedding_dim, device="meta", dtype=emb.weight.dtype)
        out.weight_int8, out.weight_absmax = quantize_weight_rows(emb.weight.detach())
        return out

    def _apply(self, fn, recurse=True):
        absmax = self.weight_absmax
        # what the cast makes of a float tensor of the output dtype is the new output dtype (.half(),
        # .to(torch.bfloat16), .float() after .half(); a device move keeps it), as for the layers around it
        out_dtype = fn(torch.empty(0, dtype=self.dtype, device=absmax.device)).dtype
        super()._apply(fn, recurse)
        if self.weight_absmax.dtype != torch.float32:  # float32 scales whatever the module is cast to
            self.weight_absmax = absmax.to(self.weight_absmax.device)
        self.dtype = out_dtype
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        w = state_dict.get(key)
        if w is not None and w.is_floating_point():
            if tuple(w.shape) != (self.num_embeddings, self.embedding_dim):
                raise ValueError(f"{key} has shape {tuple(w.shape)}, expected {(self.num_embeddings, self.embedding_dim)}")
            del state_dict[key]
            state_dict[prefix + "weight_int8"], state_dict[prefix + "weight_absmax"] = quantize_weight_rows(w)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input, self.weight_int8)  # (..., dim) int8
        scale = F.embedding(input, self.weight_absmax.unsqueeze(1))  # (..., 1)
        return (rows.float() * (scale / 127.0)).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, dtype={str(self.dtype).removeprefix('torch.')}"


class Embedding(State32bit, nn.Embedding):
    """``torch.nn.Embedding`` whose weight always gets 32-bit optimizer state from eightbit optimizers (as
    bitsandbytes' ``nn.Embedding``: embedding rows are updated sparsely, and 8-bit block-wise state of rarely
    updated rows loses precision). Same arguments as ``torch.nn.Embedding``; see also ``StableEmbedding``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._register_override()
