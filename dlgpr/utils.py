"""Small helpers shared across the package."""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from types import ModuleType
from typing import Iterator

from torch import nn

__all__ = ["EXTRAS", "PACKAGES", "eval_mode", "require_extra"]

#: Optional dependencies by install extra (``pip install 'dlgpr[build]'``): the base install
#: trains and evaluates; the dataset builders and the API clients need ``build``, the trl
#: comparison benchmark ``bench``, the place finder's web page ``app``. ``make install`` installs
#: every extra.
EXTRAS: dict[str, tuple[str, ...]] = {"build": ("openai", "spacy", "ultralytics"), "bench": ("trl",), "app": ("gradio",)}

#: Modules whose package on the registry has another name (``faiss`` comes from ``faiss-cpu``).
PACKAGES: dict[str, str] = {"faiss": "faiss-cpu"}


def require_extra(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise ``ImportError`` in one line naming the extra that installs it."""
    extra = next((e for e, mods in EXTRAS.items() if module.split(".")[0] in mods), None)
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        package = PACKAGES.get(top, top)
        if extra:
            raise ImportError(f"{purpose} needs the {top} package, which the base install leaves out: pip install 'dlgpr[{extra}]'") from None
        raise ImportError(f"{purpose} needs the {top} module, which is not installed: pip install {package}") from None


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and give it back the mode it had, even on an error.

    Inference inside training (a rollout, a gallery encode, a reward's re-ranking) must not leave
    dropout off, nor turn it on in a module that was frozen in eval mode.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
