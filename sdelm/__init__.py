"""sdelm: text generation by a large language model as a stochastic differential equation.

The public API that the book's chapters use; see each module for details.
"""

from importlib.metadata import PackageNotFoundError, version

from sdelm import corpus, describe, plots
from sdelm.cache import cache_dir, cached_trajectories
from sdelm.claims import ClaimFailedError, Claims
from sdelm.collect import collect_trajectories
from sdelm.devices import resolve_device
from sdelm.extract import encode_texts, extract
from sdelm.lm import LM, LMLoadError, load_lm
from sdelm.trajectories import Trajectories, TrajectoryFileError

try:
    __version__ = version("sdelm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "LM",
    "ClaimFailedError",
    "Claims",
    "LMLoadError",
    "Trajectories",
    "TrajectoryFileError",
    "cache_dir",
    "cached_trajectories",
    "collect_trajectories",
    "corpus",
    "describe",
    "encode_texts",
    "extract",
    "load_lm",
    "plots",
    "resolve_device",
]
