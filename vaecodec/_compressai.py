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
   modules made from their real import specs (same ``__path__``, ``__file__``, ``__spec__``)
   but without running their ``__init__.py``. Importing a submodule such as
   ``compressai.entropy_models`` then finds its files as usual and runs only its own imports.
2. Each such package completes itself on first use of anything it has not loaded yet: a
   module ``__getattr__`` (PEP 562) runs the real ``__init__.py`` into the same module
   object. So ``compressai.zoo``, ``compressai.__version__`` or ``from compressai.models
   import MeanScaleHyperprior`` later in the same process work exactly as after a plain
   ``import compressai`` (benchmarks/speed.py does that), with the same class objects.
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

import importlib
import importlib.util
import sys
import types
from typing import Any

import torch  # noqa: F401  (CompressAI's C extensions need libtorch loaded first)

#: Packages whose ``__init__.py`` imports far more than the codec needs.
_LIGHT_PACKAGES = ("compressai", "compressai.models")


def _complete_on_demand(name: str) -> types.ModuleType:
    """Register package ``name`` without running its ``__init__.py`` (see the module doc)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not installed (pip install compressai)")
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str) -> Any:
        # Something outside the codec wants the whole package: run its real __init__ once,
        # into this very module object, then answer as a plain import would.
        if attr.startswith("__") and attr.endswith("__") and attr not in ("__version__",
                                                                            "__all__"):
            raise AttributeError(attr)
        module.__dict__.pop("__getattr__", None)
        spec.loader.exec_module(module)
        return getattr(module, attr)

    module.__getattr__ = __getattr__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


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
    _complete_on_demand(_name)

_entropy_models = _import_entropy_models()
from compressai.ans import RansDecoder, RansEncoder  # noqa: E402
from compressai.layers import GDN  # noqa: E402
from compressai.models.utils import conv, deconv  # noqa: E402
from compressai.ops import LowerBound  # noqa: E402

EntropyBottleneck = _entropy_models.EntropyBottleneck
GaussianConditional = _entropy_models.GaussianConditional

__all__ = ["EntropyBottleneck", "GaussianConditional", "GDN", "LowerBound", "RansDecoder",
           "RansEncoder", "conv", "deconv"]
