"""Importing eightbit must stay light: no transformers, matplotlib, peft or onnx at import time."""
import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, eightbit, eightbit.functional, eightbit.nn, eightbit.optim, eightbit.quantize;"
        "heavy=[m for m in ('transformers','matplotlib','peft','onnxruntime','torchao','bitsandbytes') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported by `import eightbit`: {out.stdout.strip()}"
