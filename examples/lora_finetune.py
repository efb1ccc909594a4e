"""8-bit LoRA fine-tuning: a small causal LM loaded in LLM.int8() through transformers, LoRA adapters
from PEFT on top of the frozen int8 linears, trained with eightbit's 8-bit AdamW.

Nothing is downloaded: the LM is a LLaMA built from a small config with random weights and saved to a
temporary folder, then loaded with ``from_pretrained(..., quantization_config=EightbitConfig("llm_int8"))``.
The task is synthetic and deterministic: every sequence counts upward from a random start with a step
of 1, 2 or 3 (mod the vocabulary size), so after a few tokens the continuation is fully predictable.

    python examples/lora_finetune.py --steps 80
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch

import eightbit
import eightbit.integrations.peft  # noqa: F401  (registers the LoRA layer for Linear8bitLt)
from eightbit.integrations.transformers import EightbitConfig

VOCAB = 64
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_batch(gen: torch.Generator, batch: int, seq: int) -> torch.Tensor:
    """[batch, seq] token ids: arithmetic progressions mod VOCAB with steps 1..3."""
    start = torch.randint(0, VOCAB, (batch, 1), generator=gen)
    step = torch.randint(1, 4, (batch, 1), generator=gen)
    return (start + step * torch.arange(seq)) % VOCAB


def build_model(path: str, seed: int) -> torch.nn.Module:
    """Save a random-init small LLaMA to ``path`` and load it back with LLM.int8() linears."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=EightbitConfig("llm_int8", threshold=6.0))


def finetune(*, steps: int = 80, seed: int = 0, lr: float = 3e-3, batch: int = 12, seq: int = 24, rank: int = 16,
             log_every: int = 0) -> dict:
    """Run the fine-tuning; returns the per-step losses and the base-weight check."""
    from peft import LoraConfig, get_peft_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(tmp, seed)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = eightbit.optim.AdamW8bit(trainable, lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        ids = make_batch(gen, batch, seq)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}")
    after = model.state_dict()
    return {
        "losses": losses,
        "seconds": time.perf_counter() - t0,
        "trainable": sum(p.numel() for p in trainable),
        "total": sum(p.numel() for p in model.parameters()),
        "base_unchanged": all(torch.equal(v, after[k]) for k, v in base_before.items()),
        "model": model,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args()
    torch.set_num_threads(2)
    out = finetune(steps=args.steps, seed=args.seed, lr=args.lr, log_every=max(1, args.steps // 10))
    losses = out["losses"]
    k = max(1, min(10, len(losses) // 5))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"\ntrainable params {out['trainable']:,} of {out['total']:,} ({100 * out['trainable'] / out['total']:.1f}%)")
    print(f"loss: first {k} steps {first:.4f} -> last {k} steps {last:.4f} (uniform guess {math.log(VOCAB):.4f}), "
          f"min {min(losses):.4f}; {len(losses)} steps in {out['seconds']:.1f} s")
    print(f"base int8 weights and scales bit-identical after training: {out['base_unchanged']}")


if __name__ == "__main__":
    main()
