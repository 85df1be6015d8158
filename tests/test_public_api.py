"""The public API lives at the package roots: every name in ``__all__`` imports, and no public
name of a root is left out of its ``__all__``."""

import importlib

import pytest


@pytest.mark.parametrize("package", ["softmax_theory", "llm_bridge"])
def test_every_name_in_all_imports(package):
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    exported = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, type(module))
    }
    assert exported == set(module.__all__), exported ^ set(module.__all__)


def test_softmax_theory_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, softmax_theory; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
