"""Checkpoints never use pickle: the package must not import pickle nor call torch.load unsafely."""
import ast
from pathlib import Path

import eightbit

PKG = Path(eightbit.__file__).parent


def _sources():
    return sorted(PKG.rglob("*.py"))


def test_sources_found():
    assert len(_sources()) > 10


def test_no_pickle_imports_or_unsafe_torch_load():
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle") for n in names):
                    offenders.append(f"{path}:{node.lineno} imports pickle")
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name == "load" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    if not ok:
                        offenders.append(f"{path}:{node.lineno} torch.load without weights_only=True")
                if name in ("save", "load") and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "pickle":
                    offenders.append(f"{path}:{node.lineno} pickle.{name}")
    assert not offenders, "\n".join(offenders)
