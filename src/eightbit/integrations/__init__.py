"""Integrations: Hugging Face transformers and PEFT, torch.distributed."""
