"""sdelm: text generation by a large language model as a stochastic differential equation.

The public API that the book's chapters use; see each module for details. Names are imported
on first use (PEP 562), so that ``import sdelm`` and the command line start without loading
torch, transformers and the analyses that a task does not need.
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from sdelm.numerics import pin_kernels

pin_kernels()  # before torch runs anything: the same bits on every x86 processor

try:
    __version__ = version("sdelm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

#: Submodules reachable as attributes (``sdelm.plots``).
SUBMODULES = frozenset(
    {
        "analysis",
        "book",
        "control",
        "corpus",
        "energy",
        "generation",
        "models",
        "numerics",
        "plots",
        "stats",
        "synthetic",
        "theory",
    }
)
#: Each public name, by the module that defines it.
ORIGINS = {
    "Branches": "sdelm.branches",
    "ClaimFailedError": "sdelm.book",
    "Claims": "sdelm.book",
    "FitResult": "sdelm.fit",
    "LM": "sdelm.lm",
    "LMLoadError": "sdelm.embedded",
    "NeuralSDE": "sdelm.models",
    "PreparedData": "sdelm.data",
    "Projection": "sdelm.data",
    "SDEData": "sdelm.data",
    "SDEModel": "sdelm.models",
    "Trajectories": "sdelm.trajectories",
    "TrajectoryFileError": "sdelm.trajectories",
    "Transitions": "sdelm.data",
    "branch": "sdelm.generation.branching",
    "cache_dir": "sdelm.files",
    "cached_fit": "sdelm.cache",
    "cached_model": "sdelm.cache",
    "cached_trajectories": "sdelm.cache",
    "collect_branches": "sdelm.collect",
    "collect_layer_trajectories": "sdelm.collect",
    "collect_trajectories": "sdelm.collect",
    "compare_models": "sdelm.analysis.comparison",
    "encode_texts": "sdelm.generation.teacher_forced",
    "extract": "sdelm.generation.sampling",
    "fit": "sdelm.fit",
    "layer_trajectories": "sdelm.generation.layer_time",
    "load_checkpoint": "sdelm.models",
    "load_lm": "sdelm.lm",
    "load_projection": "sdelm.models",
    "nll": "sdelm.fit",
    "prepare": "sdelm.data",
    "project": "sdelm.data",
    "read_in_context": "sdelm.generation.teacher_forced",
    "rescore": "sdelm.generation.rescore",
    "untempered": "sdelm.generation.rescore",
    "resolve_device": "sdelm.devices",
    "save_checkpoint": "sdelm.models",
    "simulate": "sdelm.simulate",
    "standard_models": "sdelm.analysis.comparison",
    "summarise": "sdelm.analysis.comparison",
    "untrained": "sdelm.lm",
}

if TYPE_CHECKING:  # the names as static tools see them
    from sdelm import (
        analysis,
        book,
        control,
        corpus,
        energy,
        generation,
        models,
        plots,
        stats,
        synthetic,
        theory,
    )
    from sdelm.analysis.comparison import compare_models, standard_models, summarise
    from sdelm.book import ClaimFailedError, Claims
    from sdelm.cache import cached_fit, cached_model, cached_trajectories
    from sdelm.collect import collect_branches, collect_layer_trajectories, collect_trajectories
    from sdelm.data import PreparedData, Projection, SDEData, Transitions, prepare, project
    from sdelm.devices import resolve_device
    from sdelm.embedded import LMLoadError
    from sdelm.files import cache_dir
    from sdelm.fit import FitResult, fit, nll
    from sdelm.generation import (
        Branches,
        branch,
        encode_texts,
        extract,
        layer_trajectories,
        read_in_context,
        rescore,
        untempered,
    )
    from sdelm.lm import LM, load_lm, untrained
    from sdelm.models import NeuralSDE, SDEModel, load_checkpoint, load_projection, save_checkpoint
    from sdelm.simulate import simulate
    from sdelm.trajectories import Trajectories, TrajectoryFileError


def __getattr__(name: str) -> Any:
    """Import a submodule or a public name on first use."""
    if name in SUBMODULES:
        return importlib.import_module(f"sdelm.{name}")
    if name in ORIGINS:
        value = getattr(importlib.import_module(ORIGINS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdelm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *SUBMODULES, *ORIGINS])


class _Package(types.ModuleType):
    """The package's module type: ``sdelm.fit`` stays the function once ``sdelm/fit.py`` loads.

    Importing a submodule binds it on its package under its own name. Three public functions
    share their module's name (``extract``, ``fit``, ``simulate``), so a lazy package would
    otherwise answer ``sdelm.fit`` with the module after any ``from sdelm.fit import ...``.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and ORIGINS.get(name) == f"sdelm.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "LM",
    "Branches",
    "ClaimFailedError",
    "Claims",
    "FitResult",
    "LMLoadError",
    "NeuralSDE",
    "PreparedData",
    "Projection",
    "SDEData",
    "SDEModel",
    "Trajectories",
    "TrajectoryFileError",
    "Transitions",
    "analysis",
    "book",
    "branch",
    "cache_dir",
    "cached_fit",
    "cached_model",
    "cached_trajectories",
    "collect_branches",
    "collect_layer_trajectories",
    "collect_trajectories",
    "compare_models",
    "control",
    "corpus",
    "encode_texts",
    "energy",
    "extract",
    "fit",
    "generation",
    "layer_trajectories",
    "load_checkpoint",
    "load_lm",
    "load_projection",
    "models",
    "nll",
    "numerics",
    "plots",
    "prepare",
    "project",
    "read_in_context",
    "rescore",
    "resolve_device",
    "save_checkpoint",
    "simulate",
    "standard_models",
    "stats",
    "summarise",
    "synthetic",
    "theory",
    "untempered",
    "untrained",
]
