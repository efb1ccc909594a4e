"""Case "load": a float Hugging Face checkpoint (MiniLM, fp32 safetensors) loaded by transformers'
``from_pretrained`` in fp32 with every weight then read (summed: the checkpoint is memory-mapped, so a load
that never touches a weight has not read it), and straight into LLM.int8() through
``from_pretrained(quantization_config=EightbitConfig("llm_int8"))`` and eightbit's streaming loader
(``from_pretrained_streaming``), which quantize each weight as it is read. GB/s: checkpoint bytes per second.
Target (issue 18, item 3): each 8-bit load at most 1.5x the fp32 load that reads every weight.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .common import Built, Context, Impl, Row, Unavailable, measure


def _path() -> str:
    try:
        from eightbit.models.minilm import minilm_path

        return str(minilm_path())
    except Exception as e:  # noqa: BLE001 - the model package is optional
        raise Unavailable(f"MiniLM model package not available: {e}") from e


def _fp32(path: str) -> Built:
    from transformers import AutoModel

    def fn():
        model = AutoModel.from_pretrained(path)
        with torch.no_grad():
            return sum(float(t.sum()) for t in model.state_dict().values() if t.is_floating_point())

    return Built(fn)


def _int8(path: str, streaming: bool) -> Built:
    from transformers import AutoModel

    from eightbit.integrations.transformers import EightbitConfig, from_pretrained_streaming

    def fn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if streaming:
                return from_pretrained_streaming(path, EightbitConfig("llm_int8"))
            return AutoModel.from_pretrained(path, quantization_config=EightbitConfig("llm_int8"))

    return Built(fn)


def run(ctx: Context) -> list[Row]:
    """The load configurations, as result rows."""
    try:
        path = _path()
    except Unavailable as e:
        return [Row("load", "MiniLM", "eightbit from_pretrained LLM.int8()", "unavailable", reason=str(e))]
    nbytes = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    impls = [Impl("transformers fp32 load, every weight read", lambda: _fp32(path)),
             Impl("eightbit from_pretrained LLM.int8()", lambda: _int8(path, False)),
             Impl("eightbit from_pretrained_streaming LLM.int8()", lambda: _int8(path, True))]
    return measure(ctx, "load", f"MiniLM checkpoint ({nbytes / 2**20:.0f} MiB fp32 safetensors)", impls,
                   bytes_per_call=nbytes)
