"""SDE models dX = μ(X, t) dt + σ(X, t) dW, and their checkpoints.

Every model is a :class:`SDEModel`: a ``torch.nn.Module`` with ``drift(x, t)`` and
``diffusion(x, t)`` for batches of states, and the ``f``/``g``/``noise_type``/``sde_type``
interface that ``torchsde`` integrates directly. The noise is diagonal (each coordinate draws
its own), or correlated by a constant :class:`~sdelm.noise.NoiseCorrelation` (``correlation``),
in which case ``diffusion`` gives each coordinate's own scale and ``g`` the full factor.
:class:`NeuralSDE` is the paper's model (two separate networks); the baselines live in
:mod:`sdelm.baselines`.

Checkpoints are one safetensors file holding the weights and, in its header, the model's class
and constructor arguments as JSON: :func:`load_checkpoint` rebuilds the model without any of the
training code's state.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sdelm.data import Projection
from sdelm.files import save_atomically
from sdelm.noise import NoiseCorrelation

__all__ = [
    "SILU_LIPSCHITZ",
    "CheckpointError",
    "NeuralSDE",
    "SDEModel",
    "load_checkpoint",
    "load_projection",
    "save_checkpoint",
]

#: Lipschitz constant of SiLU, max |d/dx x·sigmoid(x)|.
SILU_LIPSCHITZ = 1.0998
_REGISTRY: dict[str, type[SDEModel]] = {}


class SDEModel(nn.Module):
    """Base class: an Itô SDE on R^dim, with diagonal or correlated noise.

    Subclasses implement :meth:`drift` and :meth:`diffusion`, store their constructor
    arguments in ``self.config`` and are registered for :func:`load_checkpoint`. A subclass
    with correlated noise sets ``correlation`` (and ``noise_type = "general"``) and overrides
    :meth:`noise_scale`.
    """

    noise_type: str = "diagonal"
    sde_type: ClassVar[str] = "ito"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}.")
        self.dim = dim
        self.config: dict[str, Any] = {"dim": dim}
        #: The noise's constant correlation; None where coordinates draw it independently.
        self.correlation: NoiseCorrelation | None = None

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Drift μ(x, t).

        Args:
            x: Float tensor of size (batch, dim).
            t: Float tensor of size (batch,).

        Returns:
            Float tensor of size (batch, dim).

        """
        raise NotImplementedError

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Each coordinate's noise scale σ(x, t), positive: sqrt of the diagonal of σσᵀ.

        Args:
            x: Float tensor of size (batch, dim).
            t: Float tensor of size (batch,).

        Returns:
            Float tensor of size (batch, dim).

        """
        raise NotImplementedError

    def noise_scale(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Scales s(x, t) of the noise diag(s) C dW before its correlation C.

        The diffusion itself where the noise is diagonal.

        Args:
            x: Float tensor of size (batch, dim).
            t: Float tensor of size (batch,).

        Returns:
            Float tensor of size (batch, dim), positive.

        """
        return self.diffusion(x, t)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error when states have the wrong dimension."""
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} models {self.dim}-dimensional states, got a tensor of "
                f"size {tuple(x.shape)}; prepare the data with dim={self.dim} or build the "
                f"model with dim={x.shape[-1]}."
            )

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Drift in torchsde's convention: scalar ``t``, states (batch, dim)."""
        return self.drift(y, torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(len(y)))

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Diffusion in torchsde's convention: scalar ``t``, states (batch, dim).

        Returns:
            The diagonal, size (batch, dim); with correlated noise the factor diag(s) C,
            size (batch, dim, dim) (torchsde's ``"general"`` noise).

        """
        times = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(len(y))
        if self.correlation is None:
            return self.diffusion(y, times)
        return self.correlation.factor(self.noise_scale(y, times))

    def extra_repr(self) -> str:
        """Show the constructor arguments in the module's repr."""
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def _with_time(x: torch.Tensor, t: torch.Tensor, time_scale: float) -> torch.Tensor:
    """Append the feature t / time_scale to states (batch, dim); nothing when time_scale is 0."""
    if not time_scale:
        return x
    return torch.cat([x, (t / time_scale).unsqueeze(-1).to(x.dtype)], dim=-1)


def _mlp(n_in: int, n_out: int, hidden: int, depth: int, normalise: bool) -> nn.Sequential:
    sizes = [n_in, *[hidden] * depth, n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        layers.append(spectral_norm(linear) if normalise else linear)
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class NeuralSDE(SDEModel):
    """The neural SDE: drift and diffusion are two separate MLPs of (x, t/time_scale).

    Args:
        dim: State dimension.
        hidden: Width of the hidden layers.
        depth: Number of hidden layers.
        time_scale: Time is fed to the networks as ``t / time_scale`` (e.g. the sequence
            length); ``0`` drops time (an autonomous SDE).
        spectral_norm: Divide every weight matrix by its spectral norm as estimated by power
            iteration (one step per training forward pass), which keeps the drift's Lipschitz
            constant near ``SILU_LIPSCHITZ ** depth``; :meth:`lipschitz_bound` computes the
            exact bound of the weights as they are.
        min_sigma: Floor added to the softplus diffusion.
        correlated: Correlate the noise's coordinates by a learnt constant
            :class:`~sdelm.noise.NoiseCorrelation`: the network gives the scales s(x, t) of
            diag(s) C dW. False: diagonal noise, the paper's model.
        seed: Seed of the weight initialisation (the global random state is left alone).

    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 128,
        depth: int = 2,
        time_scale: float = 48.0,
        spectral_norm: bool = False,
        min_sigma: float = 1e-3,
        correlated: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(dim)
        self.config.update(
            hidden=hidden,
            depth=depth,
            time_scale=time_scale,
            spectral_norm=spectral_norm,
            min_sigma=min_sigma,
            correlated=correlated,
            seed=seed,
        )
        self.time_scale = time_scale
        self.min_sigma = min_sigma
        n_in = dim + (1 if time_scale else 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.drift_net = _mlp(n_in, dim, hidden, depth, spectral_norm)
            self.diffusion_net = _mlp(n_in, dim, hidden, depth, spectral_norm)
        if correlated:
            self.correlation = NoiseCorrelation(dim)
            self.noise_type = "general"

    def _features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return _with_time(x, t, self.time_scale)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.drift_net(self._features(x, t))

    def noise_scale(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return nn.functional.softplus(self.diffusion_net(self._features(x, t))) + self.min_sigma

    def diffusion(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: D102
        scale = self.noise_scale(x, t)
        return scale if self.correlation is None else self.correlation.marginal(scale)

    def lipschitz_bound(self) -> float:
        """Return an upper bound on the drift's Lipschitz constant in x.

        The product of the spectral norms of the drift network's weight matrices (the first
        restricted to the state columns) times SiLU's Lipschitz constant per activation.
        """
        linears = [m for m in self.drift_net if isinstance(m, nn.Linear)]
        norms = []
        for i, linear in enumerate(linears):
            weight = linear.weight.detach()
            if i == 0:
                weight = weight[:, : self.dim]
            norms.append(torch.linalg.matrix_norm(weight, ord=2).item())
        return math.prod(norms) * SILU_LIPSCHITZ ** (len(linears) - 1)


def save_checkpoint(
    model: SDEModel, path: str | os.PathLike, *, projection: Projection | None = None
) -> Path:
    """Write a model's weights and constructor arguments to one safetensors file, atomically.

    Args:
        model: A fitted model.
        path: Destination, conventionally ``*.safetensors``.
        projection: The map from hidden states to the model's coordinates, stored with the
            weights (``projection.*`` tensors) so that :func:`load_projection` can place new
            trajectories in the model's coordinates.

    Returns:
        The path written.

    """
    header = {"class": type(model).__name__, "config": model.config}
    tensors = dict(model.state_dict())
    metadata = {"sdelm_model": json.dumps(header)}
    if projection is not None:
        for name in ("mean", "components", "scale", "explained_variance"):
            tensors[f"projection.{name}"] = getattr(projection, name).contiguous()
        metadata["sdelm_projection_layer"] = str(projection.layer)
    return save_atomically(tensors, path, metadata)


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, or not what :func:`save_checkpoint` writes."""


def _check_projection(parts: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse a stored projection whose sizes disagree or whose scales are not positive."""
    components, mean, scale = parts["components"], parts["mean"], parts["scale"]
    problems = []
    if components.ndim != 2 or mean.shape != components.shape[1:]:
        problems.append(
            f"components of size {tuple(components.shape)} do not map states of the mean's "
            f"size {tuple(mean.shape)} (they should be (dim, hidden size))"
        )
    elif scale.shape != components.shape[:1]:
        problems.append(f"{len(scale)} scales for {len(components)} components")
    elif not (torch.isfinite(scale).all() and (scale > 0).all()):
        problems.append("its scales are not all positive and finite")
    if problems:
        raise CheckpointError(
            f"{path}: the stored projection is damaged: {problems[0]}. Fit the model again."
        )


def load_projection(path: str | os.PathLike) -> Projection:
    """Read the projection stored with a checkpoint by ``save_checkpoint(..., projection=)``.

    Args:
        path: The checkpoint file.

    Returns:
        The projection.

    Raises:
        CheckpointError: If the file is missing, damaged or holds no projection.

    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "sdelm_projection_layer" not in metadata:
                raise CheckpointError(
                    f"{path} holds no projection; save it with "
                    "save_checkpoint(..., projection=...)."
                )
            parts = {
                name: handle.get_tensor(f"projection.{name}")
                for name in ("mean", "components", "scale", "explained_variance")
            }
        _check_projection(parts, path)
        return Projection(**parts, layer=int(metadata["sdelm_projection_layer"]))
    except CheckpointError:
        raise
    except (OSError, SafetensorError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable sdelm checkpoint with a projection ({error}); write it "
            "again with `sdelm fit` or save_checkpoint(..., projection=...)."
        ) from error


def _check_weights(
    cls: type[SDEModel],
    dim: int,
    config: dict[str, Any],
    stored: dict[str, tuple[int, ...]],
    path: str | os.PathLike,
) -> None:
    """Check that ``cls(dim, **config)`` has exactly the stored tensors' names and sizes.

    The model is built on the ``meta`` device, so a config that asks for a huge model allocates
    nothing.

    Args:
        cls: The model class named in the checkpoint.
        dim: The state dimension from its config.
        config: The other constructor arguments from its config.
        stored: Size of every model tensor in the file, by name.
        path: The checkpoint, for the message.

    Raises:
        CheckpointError: If the config does not build a model, or its weights differ.

    """
    try:
        with torch.device("meta"):
            skeleton = cls(dim, **config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise CheckpointError(
            f"{path}: its config does not build a {cls.__name__} ({error})."
        ) from error
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    problems = [f"{name} is missing" for name in sorted(set(expected) - set(stored))]
    problems += [f"{name} is unexpected" for name in sorted(set(stored) - set(expected))]
    problems += [
        f"{name} has size {stored[name]}, the config needs {shape}"
        for name, shape in sorted(expected.items())
        if name in stored and stored[name] != shape
    ]
    if problems:
        raise CheckpointError(
            f"{path}: the model config {dict(config, dim=dim)} does not match the stored "
            f"weights ({'; '.join(problems[:3])}). The file is damaged or was edited; write it "
            "again with `sdelm fit` or save_checkpoint."
        )


def load_checkpoint(path: str | os.PathLike) -> SDEModel:
    """Rebuild a model saved by :func:`save_checkpoint`.

    The config in the file's header is checked against the stored tensors' sizes before the
    model is built.

    Args:
        path: The checkpoint file.

    Returns:
        The model, on the CPU, in eval mode.

    Raises:
        CheckpointError: If the file is missing, damaged, not an sdelm checkpoint, names an
            unknown model class, its config does not match its weights, or a weight is NaN
            or infinite.

    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {})["sdelm_model"])
            stored = {
                name: tuple(handle.get_slice(name).get_shape())
                for name in handle.keys()
                if not name.startswith("projection.")
            }
        name = str(header["class"])
        config = dict(header["config"])
        dim = config.pop("dim")
    except (KeyError, OSError, SafetensorError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not an sdelm model checkpoint ({error}).") from error
    if name not in _REGISTRY:  # the other models register when their modules are imported
        importlib.import_module("sdelm.baselines")
        importlib.import_module("sdelm.lines_of_thought")
    cls = _REGISTRY.get(name)
    if cls is None:
        raise CheckpointError(f"{path} holds an unknown model class {name!r}.")
    _check_weights(cls, dim, config, stored, path)
    model = cls(dim, **config)
    try:
        weights = {
            k: v for k, v in load_file(str(path)).items() if not k.startswith("projection.")
        }
    except SafetensorError as error:
        raise CheckpointError(f"{path} is damaged ({error}); write it again.") from error
    cast = [name for name, value in weights.items() if not value.is_floating_point()]
    if cast:
        raise CheckpointError(
            f"{path}: the weights {cast[:3]} are not floating-point numbers; the file was "
            "edited. Fit the model again."
        )
    broken = [name for name, value in weights.items() if not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(
            f"{path}: the weights {broken[:3]} hold NaN or infinite values; the model would "
            "give NaN everywhere. Fit it again (a fit that diverged keeps its last good "
            "weights)."
        )
    model.load_state_dict(weights)
    return model.eval()
