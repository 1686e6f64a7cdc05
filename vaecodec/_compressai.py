"""The parts of CompressAI the codec uses, without the cost of ``import compressai``.

``compressai/__init__.py`` imports every subpackage it has, and through its point-cloud
datasets torch_geometric (which pulls in torch._dynamo), pandas and more; its entropy models
import scipy.stats. That is about 4 s of a cold start whose real work (load the weights, run
the transforms, range-code) takes well under a second. The codec needs four small pieces:
the entropy models, GDN, the conv/deconv helpers and the rANS coder, none of which uses any
of that. This module is the one place that imports CompressAI; the rest of the package takes
those names from here.

How, without patching CompressAI's files:

1. ``compressai`` and ``compressai.models`` are registered in ``sys.modules`` as package
   modules made from their real import specs (same ``__path__``, ``__file__``, ``__spec__``),
   running their ``__init__.py`` without the statements that import every subpackage.
   Importing a submodule such as ``compressai.entropy_models`` then finds its files as usual
   and runs only its own imports.
2. Each such package completes itself on first use of a name it lacks: a module
   ``__getattr__`` (PEP 562) runs the statements left out, into the same module object.
   So ``compressai.zoo`` or ``from compressai.models import MeanScaleHyperprior`` later in
   the same process work exactly as after a plain ``import compressai`` (benchmarks/speed.py
   does that), with the same class objects.
3. ``compressai/entropy_models/entropy_models.py`` imports scipy.stats for one call,
   ``norm.ppf`` in ``GaussianConditional.update``, which builds CDF tables: training and
   export only, since the shipped weights carry their tables. While that module is imported,
   a stand-in ``scipy`` sits in ``sys.modules``; it is taken out right after, so every other
   ``import scipy`` gets the real one, and the stand-in that module keeps imports the real
   scipy.stats the first time it is used.

If CompressAI was already imported in full, none of this happens: its modules are used as
they are. ``tests/test_coldstart.py`` checks in a fresh process that an encode and a decode
leave torch_geometric, pandas, scipy and compressai.datasets unimported.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import types
from typing import Any

import torch  # noqa: F401  (CompressAI's C extensions need libtorch loaded first)

#: Packages whose ``__init__.py`` imports far more than the codec needs.
_LIGHT_PACKAGES = ("compressai", "compressai.models")


def _imports_own_submodules(node: ast.stmt, package: str) -> bool:
    """``from compressai import datasets, ...``, ``from .base import *``: the statements of
    an ``__init__.py`` that load the package's subpackages."""
    if not isinstance(node, ast.ImportFrom):
        return False
    if node.level:
        return node.level == 1
    return node.module == package or (node.module or "").startswith(package + ".")


def _register_light(name: str) -> None:
    """Register package ``name`` with its ``__init__.py`` less the statements that import its
    subpackages; those run on the first use of a name it does not have (see the module doc).
    The rest of ``compressai/__init__.py`` (its version, ``get_entropy_coder``, which the
    entropy models call) runs as written."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None or spec.loader is None:
        raise ImportError(f"{name} is not installed (pip install compressai)")
    tree = ast.parse(spec.loader.get_source(name) or "", spec.origin or name)
    deferred = [n for n in tree.body if _imports_own_submodules(n, name)]
    eager = [n for n in tree.body if n not in deferred]

    def run(body: list[ast.stmt]) -> None:
        code = compile(ast.Module(body=body, type_ignores=[]), spec.origin or name, "exec",
                       dont_inherit=True)
        exec(code, module.__dict__)

    def __getattr__(attr: str) -> Any:
        # Someone wants more of the package than the codec: import its subpackages now,
        # into this very module object, then answer as a plain import would have.
        if attr.startswith("__"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        module.__dict__.pop("__getattr__", None)
        run(deferred)
        return getattr(module, attr)

    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    try:
        run(eager)
    except BaseException:
        del sys.modules[name]
        raise
    module.__getattr__ = __getattr__


class _LazyScipy(types.ModuleType):
    """What entropy_models.py sees as ``scipy``: the real scipy.stats on first use."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        importlib.import_module("scipy.stats")
        return getattr(sys.modules["scipy"], attr)


def _import_entropy_models() -> types.ModuleType:
    name = "compressai.entropy_models"
    if name in sys.modules or "scipy" in sys.modules:
        return importlib.import_module(name)
    stand_in = _LazyScipy("scipy", "stand-in: imports the real scipy on first use")
    stubs = {"scipy": stand_in, "scipy.stats": types.ModuleType("scipy.stats")}
    sys.modules.update(stubs)
    try:
        return importlib.import_module(name)
    finally:
        for key, stub in stubs.items():
            if sys.modules.get(key) is stub:
                del sys.modules[key]


for _name in _LIGHT_PACKAGES:
    _register_light(_name)

_entropy_models = _import_entropy_models()
from compressai.ans import BufferedRansEncoder, RansDecoder, RansEncoder  # noqa: E402
from compressai.layers import GDN  # noqa: E402
from compressai.models.utils import conv, deconv  # noqa: E402
from compressai.ops import LowerBound  # noqa: E402

EntropyBottleneck = _entropy_models.EntropyBottleneck
GaussianConditional = _entropy_models.GaussianConditional

__all__ = ["BufferedRansEncoder", "EntropyBottleneck", "GaussianConditional", "GDN", "LowerBound", "RansDecoder",
           "RansEncoder", "conv", "deconv"]
