"""Importing eightbit must stay light: no transformers, matplotlib, peft or onnx at import time."""
import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, eightbit, eightbit.functional, eightbit.nn, eightbit.optim, eightbit.quantize;"
        "heavy=[m for m in ('transformers','matplotlib','peft','onnxruntime','torchao','bitsandbytes','triton') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported by `import eightbit`: {out.stdout.strip()}"


def test_layering_nn_and_optim_do_not_import_quantize_or_kernels_directly():
    """nn/optim/quantize -> functional -> kernels: the layers and optimizers (every module of them) import
    neither eightbit.quantize nor a kernel module by name (kernels come in through functional's registration)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "src" / "eightbit"
    for pkg in ("nn", "optim", "functional"):
        for path in (root / pkg).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    target = ("." * node.level) + node.module
                    assert "quantize" not in target or pkg == "quantize", f"{path.name} imports {target}"
                    assert "kernels" not in target, f"{path.name} imports {target}"
