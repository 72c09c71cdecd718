"""DESOM: an autoencoder trained jointly with a self-organizing map (Forest et al. 2019).

Everything a reader needs is in this file:

* :class:`SOM` -- prototypes on a 2-D grid, squared distances, best-matching
  unit, neighbourhood weights from the true Manhattan grid distance;
* :class:`ConvAutoencoder` -- DESOM-1's encoder/decoder for 32x32 cutouts;
* :class:`DenseAutoencoder` -- DESOM-2's encoder/decoder for 625-bin histo-vectors;
* :class:`DESOM` -- the two together and the joint loss
  ``L = MSE(x, x') + gamma * L_SOM``, with
  ``L_SOM = mean_i sum_k w_ik ||z_i - m_k||^2`` and
  ``w_ik = exp(-delta(bmu_i, k)^2 / T^2)`` computed without gradient;
* :func:`temperature` -- T decays exponentially from T_max to T_min;
* :class:`~desomspark.desom.spec.ModelSpec` (in ``spec.py``, which needs no
  torch) -- what fixes a DESOM's architecture, saved with every checkpoint
  and registered model: ``ModelSpec(**d).build()`` rebuilds it (as nanoGPT
  rebuilds ``GPT(GPTConfig(**model_args))``).

The reference Keras DESOM computes the grid distance wrongly on 2-D maps;
here delta is the Manhattan distance between (row, column) positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# the spec is re-exported here, beside the networks it builds
from desomspark.desom.spec import KINDS, ModelSpec, desom1_spec  # noqa: F401
from desomspark.lake.schema import CUTOUT_SIZE


def temperature(iteration: int, iterations: int, t_max: float, t_min: float) -> float:
    """T at ``iteration``: ``t_max * (t_min / t_max) ** (iteration / (iterations - 1))``."""
    frac = iteration / max(iterations - 1, 1)
    return t_max * (t_min / t_max) ** min(frac, 1.0)


class SOM(nn.Module):
    """A self-organizing map of ``rows x cols`` prototypes of dimension ``dim``.

    Node ``k`` sits at row ``k // cols``, column ``k % cols`` (row-major, as
    histo-vectors are flattened).
    """

    def __init__(self, map_shape: tuple[int, int], dim: int):
        super().__init__()
        rows, cols = map_shape
        self.map_shape = (int(rows), int(cols))
        self.prototypes = nn.Parameter(torch.empty(rows * cols, dim).uniform_(-1, 1))
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        grid = torch.stack([r.flatten(), c.flatten()], dim=1)
        # Manhattan distance between every pair of nodes, on the map
        self.register_buffer("grid_distance", torch.cdist(grid.float(), grid.float(), p=1), persistent=False)

    @property
    def n_nodes(self) -> int:
        return self.prototypes.shape[0]

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances (batch, n_nodes) from each z to each prototype."""
        m = self.prototypes
        d = (z * z).sum(1, keepdim=True) - 2.0 * z @ m.T + (m * m).sum(1)[None, :]
        return d.clamp_min(0.0)

    def bmu(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the best-matching unit of each z."""
        return self.distances(z).argmin(dim=1)

    @torch.no_grad()
    def neighbourhood(self, bmu: torch.Tensor, t: float) -> torch.Tensor:
        """Weights w_ik = exp(-delta(bmu_i, k)^2 / T^2), without gradient."""
        return torch.exp(-(self.grid_distance[bmu] ** 2) / (t * t))

    def loss(self, distances: torch.Tensor, t: float) -> torch.Tensor:
        """L_SOM for a batch, given its squared distances to the prototypes."""
        weights = self.neighbourhood(distances.detach().argmin(dim=1), t)
        return (weights * distances).sum(dim=1).mean()


def _glorot(module: nn.Module) -> None:
    # Keras' defaults, as the original DESOM was trained with
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class ConvAutoencoder(nn.Module):
    """DESOM-1's autoencoder for (batch, 1, 32, 32) cutouts in [0, 1].

    Encoder: 3x3 convolutions (32, 64, 128 channels, ReLU, same padding),
    each followed by 2x2 max-pooling -> 4x4x128 -> Dense 512 (ReLU) -> z
    (Dense ``latent_dim``, linear).  The decoder mirrors it with up-sampling
    and ends in a sigmoid.
    """

    def __init__(
        self,
        latent_dim: int = 160,
        channels: tuple[int, ...] = (32, 64, 128),
        dense_units: int = 512,
        size: int = CUTOUT_SIZE,
    ):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        side = size // 2 ** len(channels)
        self.bottom = (channels[-1], side, side)
        flat = channels[-1] * side * side
        self.encoder = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(flat, dense_units), nn.ReLU(), nn.Linear(dense_units, latent_dim)
        )
        layers = [
            nn.Linear(latent_dim, dense_units),
            nn.ReLU(),
            nn.Linear(dense_units, flat),
            nn.ReLU(),
            nn.Unflatten(1, self.bottom),
        ]
        rev = list(channels[::-1])
        for c_in, c_out in zip(rev, rev[1:] + [rev[-1]]):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(rev[-1], 1, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)
        _glorot(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class DenseAutoencoder(nn.Module):
    """DESOM-2's autoencoder: input -> hidden (ReLU) -> z (ReLU) -> mirrored -> linear output."""

    def __init__(self, input_dim: int = 625, hidden: tuple[int, ...] = (450, 300), latent_dim: int = 100):
        super().__init__()
        sizes = [input_dim, *hidden, latent_dim]
        enc = []
        for a, b in zip(sizes, sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        dec = []
        rev = sizes[::-1]
        for a, b in zip(rev, rev[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        self.decoder = nn.Sequential(*dec[:-1])  # linear output
        _glorot(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class DESOM(nn.Module):
    """An autoencoder and a SOM on its latent space, trained together.

    ``forward`` returns ``(z, reconstruction, distances)`` so that every
    parameter (prototypes included) takes part in the forward pass that
    DistributedDataParallel watches.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        map_shape: tuple[int, int],
        latent_dim: int,
        spec: "ModelSpec | None" = None,
    ):
        super().__init__()
        self.autoencoder = autoencoder
        self.som = SOM(map_shape, latent_dim)
        #: how to build this model again (None for a model assembled by hand)
        self.spec = spec
        #: run the autoencoder in bfloat16 autocast in forward (a training setting, not saved)
        self.bf16 = False

    @property
    def map_shape(self) -> tuple[int, int]:
        return self.som.map_shape

    def forward(self, x: torch.Tensor):
        # the autoencoder may run in bfloat16 (training on a GPU, TrainJob.precision); the SOM's
        # distances never do: |z|^2 - 2 z.m + |m|^2 cancels, and 8 bits of mantissa lose the nearest node
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            z = self.autoencoder.encode(x)
            rec = self.autoencoder.decode(z)
        z, rec = z.float(), rec.float()
        return z, rec, self.som.distances(z)

    @torch.no_grad()
    def init_prototypes(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Prototypes = the encodings of randomly drawn samples of ``x``."""
        pick = torch.randint(len(x), (self.som.n_nodes,), generator=generator, device="cpu")
        z = self.autoencoder.encode(x[pick.to(x.device)])
        self.som.prototypes.copy_(z)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best-matching node and its squared latent distance for each sample."""
        d = self.som.distances(self.autoencoder.encode(x))
        dist, node = d.min(dim=1)
        return node, dist

    @torch.no_grad()
    def decoded_prototypes(self) -> torch.Tensor:
        """The prototypes seen through the decoder (the map of paper Figure 6)."""
        return self.autoencoder.decode(self.som.prototypes)


class DesomInference(nn.Module):
    """What is registered and served: input -> one row per sample ``[node, distance, z...]``.

    Column 0 is the best-matching node (as a float), column 1 the latent
    Euclidean distance to its prototype, the rest the latent vector.  One
    tensor in, one out: it exports with ``torch.export`` (MLflow's ``pt2``
    format, loaded without unpickling code) and serves as an MLflow pyfunc.
    Read it with :func:`split_inference`.
    """

    #: the name of the output in the registered model's signature
    output_names = ("node_distance_latent",)

    def __init__(self, desom: DESOM):
        super().__init__()
        self.desom = desom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.desom.autoencoder.encode(x)
        dist, node = self.desom.som.distances(z).min(dim=1)
        return torch.cat([node.to(z.dtype)[:, None], dist.clamp_min(0.0).sqrt()[:, None], z], dim=1)


def as_input(batch: torch.Tensor) -> torch.Tensor:
    """Stored samples -> model input: uint8 cutouts (value / 255) are scaled to [0, 1] floats."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


def split_inference(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(node, distance, latent) from a :class:`DesomInference` output."""
    return out[:, 0].round().long(), out[:, 1], out[:, 2:]


def joint_loss(model_out, x: torch.Tensor, som: SOM, t: float, gamma: float):
    """``(total, reconstruction, som)`` losses of one batch."""
    _, x_rec, distances = model_out
    rec = F.mse_loss(x_rec, x)
    som_loss = som.loss(distances, t)
    return rec + gamma * som_loss, rec, som_loss


def desom1(cfg) -> DESOM:
    """DESOM-1 as configured (``Desom1Config``)."""
    return desom1_spec(cfg).build()


def desom2(cfg, input_dim: int, map_shape: tuple[int, int], desom1_version: str | None = None) -> DESOM:
    """DESOM-2 as configured (``Desom2Config``), on a map of ``map_shape``."""
    return ModelSpec(
        "desom2",
        map_shape,
        cfg.latent_dim,
        (input_dim,),
        tuple(cfg.hidden),
        desom1_version=None if desom1_version is None else str(desom1_version),
        transform=getattr(cfg, "transform", None),
    ).build()


def map_side_for(n_samples: int, per_node: float) -> int:
    """Side of a square map giving about ``per_node`` samples per node (at least 2)."""
    return max(2, int(round(math.sqrt(n_samples / per_node))))
