"""Generation: the language model writes (or reads) text while its hidden states are recorded.

The bottom layer of sdelm above the language model itself: it imports no SDE, analysis or book
code. :func:`extract` samples (:mod:`~sdelm.generation.sampling`); :func:`encode_texts` and
:func:`read_in_context` read fixed text (:mod:`~sdelm.generation.teacher_forced`);
:func:`layer_trajectories` follows one token through depth; :func:`branch` samples many
continuations of one prefix; :func:`extract_shards` splits a long extraction into resumable
files; :func:`untempered` reads each token's probability under the model itself.
"""

from sdelm.generation.branching import branch, prefix_positions
from sdelm.generation.hooks import StateNudge, TemperatureControl
from sdelm.generation.layer_time import layer_trajectories
from sdelm.generation.rescore import rescore, untempered, untempered_logprob
from sdelm.generation.sampling import extract
from sdelm.generation.shards import extract_shards
from sdelm.generation.teacher_forced import encode_texts, read_in_context

__all__ = [
    "StateNudge",
    "TemperatureControl",
    "branch",
    "encode_texts",
    "extract",
    "extract_shards",
    "layer_trajectories",
    "prefix_positions",
    "read_in_context",
    "rescore",
    "untempered",
    "untempered_logprob",
]
