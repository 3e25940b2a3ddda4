"""sdelm: text generation by a large language model as a stochastic differential equation.

The public API that the book's chapters use; see each module for details.
"""

from importlib.metadata import PackageNotFoundError, version

from sdelm import (
    analysis,
    applications,
    baselines,
    book,
    branching,
    control,
    corpus,
    describe,
    plots,
    stats,
    synthetic,
    theory,
)
from sdelm.book import ClaimFailedError, Claims
from sdelm.branching import Branches, branch
from sdelm.cache import cache_dir, cached_fit, cached_model, cached_trajectories
from sdelm.collect import collect_branches, collect_layer_trajectories, collect_trajectories
from sdelm.data import PreparedData, Projection, SDEData, Transitions, prepare, project
from sdelm.devices import resolve_device
from sdelm.evaluate import compare_models, standard_models, summarise
from sdelm.extract import encode_texts, extract, layer_trajectories, rescore
from sdelm.fit import FitResult, fit, nll
from sdelm.lm import LM, LMLoadError, load_lm, untrained
from sdelm.models import NeuralSDE, SDEModel, load_checkpoint, load_projection, save_checkpoint
from sdelm.simulate import simulate
from sdelm.trajectories import Trajectories, TrajectoryFileError

try:
    __version__ = version("sdelm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

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
    "applications",
    "baselines",
    "book",
    "branch",
    "branching",
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
    "describe",
    "encode_texts",
    "extract",
    "fit",
    "layer_trajectories",
    "load_checkpoint",
    "load_lm",
    "load_projection",
    "nll",
    "plots",
    "prepare",
    "project",
    "rescore",
    "resolve_device",
    "save_checkpoint",
    "simulate",
    "standard_models",
    "stats",
    "summarise",
    "synthetic",
    "theory",
    "untrained",
]
