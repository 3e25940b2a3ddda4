"""What a recording keeps besides the states: decoded text, row tables and provenance."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version

import numpy as np
import pandas as pd
import torch

from sdelm.corpus import Passage
from sdelm.lm import LM
from sdelm.trajectories import Trajectories

__all__ = ["decode", "passage_rows", "provenance", "read_text"]


def decode(lm: LM, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Decode each row of ``tokens`` (n, steps), keeping the steps where ``mask`` is True."""
    return [
        lm.tokenizer.decode(row[keep].tolist(), skip_special_tokens=True)
        for row, keep in zip(tokens, mask, strict=True)
    ]


def passage_rows(passages: Sequence[Passage], texts: list[str], source: str) -> pd.DataFrame:
    """Row table of read (not generated) passages: no prompt, temperature or sample."""
    return pd.DataFrame(
        {
            "prompt_id": [p.id for p in passages],
            "prompt": "",
            "category": [p.work for p in passages],
            "temperature": np.nan,
            "sample": 0,
            "source": source,
            "text": texts,
        }
    )


def read_text(
    merged: dict[str, torch.Tensor],
    rows: pd.DataFrame,
    layers: tuple[int, ...],
    meta: dict[str, object],
) -> Trajectories:
    """Trajectories of read (teacher-forced) text: its own distribution is the untempered one."""
    return Trajectories(
        **merged,
        untempered_logprobs=merged["logprobs"].clone(),
        rows=rows,
        layers=layers,
        meta=meta,
    )


def provenance(lm: LM, layers: tuple[int, ...], **extra: object) -> dict[str, object]:
    """Return the ``meta`` of a recording: the model, its shape, the layers and the versions."""
    return {
        "model": lm.name,
        "model_class": type(lm.model).__name__,
        "hidden_size": lm.hidden_size,
        "n_layers": lm.n_layers,
        "layers": list(layers),
        "sdelm_version": version("sdelm"),
        "torch_version": torch.__version__,
        **extra,
    }
