"""Hugging Face ``Trainer`` with an eightbit optimizer: it trains, checkpoints the optimizer state and resumes from
the checkpoint to the same parameters and states as a run that was never interrupted."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

import eightbit.optim as O  # noqa: E402

STEPS, SAVE_AT = 6, 3


def _data() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 200, (16,), generator=g), "attention_mask": torch.ones(16, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(64)]


def _train(out, resume=None):
    cfg = transformers.BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=8, save_strategy="steps",
        save_steps=SAVE_AT, report_to=[], use_cpu=True, seed=0, data_seed=0, learning_rate=1e-3,
        lr_scheduler_type="linear", warmup_steps=2, weight_decay=0.01, dataloader_num_workers=0,
        disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(),
                                   optimizer_cls_and_kwargs=(O.AdamW8bit, {"lr": 1e-3, "min_8bit_size": 1024}))
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_trainer_checkpoint_resume_is_exact(tmp_path):
    """Trainer's ``optimizer_cls_and_kwargs`` takes AdamW8bit (8-bit states for the large tensors, 32-bit for the
    small ones); the checkpoint's optimizer file loads with ``weights_only=True``; resuming from step 3 ends
    bit-identical to the uninterrupted 6-step run, parameters and optimizer states alike (the learning-rate
    schedule's warm-up and decay included)."""
    model, trainer = _train(tmp_path / "run")
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert isinstance(opt, O.AdamW8bit)
    emb = model.bert.embeddings.word_embeddings.weight
    assert opt.state[emb]["state1"].dtype == torch.uint8 and int(opt.state[emb]["step"]) == STEPS
    saved = torch.load(tmp_path / "run" / f"checkpoint-{SAVE_AT}" / "optimizer.pt", weights_only=True)
    assert int(saved["state"][0]["step"]) == SAVE_AT

    resumed, trainer2 = _train(tmp_path / "run", resume=str(tmp_path / "run" / f"checkpoint-{SAVE_AT}"))
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    opt2 = trainer2.optimizer.optimizer if hasattr(trainer2.optimizer, "optimizer") else trainer2.optimizer
    for p, q in zip(model.parameters(), resumed.parameters()):
        for key, v in opt.state[p].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state[q][key])), key
