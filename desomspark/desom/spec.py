"""What fixes a DESOM's architecture: :class:`ModelSpec`, without importing torch.

The spec travels with every checkpoint, training job and registered model
(``to_dict``), and ``ModelSpec.from_dict(d).build()`` rebuilds the network
(as nanoGPT rebuilds ``GPT(GPTConfig(**model_args))``).  It lives apart from
:mod:`desomspark.desom.model` so that reading a registered model's record (the
map's shape, what DESOM-2 reads) costs no torch import: the small commands
(``label``, ``similar``, ``export``) answer in a few seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from desomspark.errors import UserError
from desomspark.lake.schema import CUTOUT_SIZE

if TYPE_CHECKING:
    from desomspark.desom.model import DESOM

KINDS = ("desom1", "desom2")


@dataclass(frozen=True)
class ModelSpec:
    """What fixes a DESOM's architecture; validated here, before any tensor is made.

    ``to_dict`` carries it through checkpoints, training jobs and
    the registered model's MLflow metadata, and :meth:`build` makes the
    model again.  ``layers`` are DESOM-1's convolution channels or DESOM-2's
    hidden units.  Models registered before the spec existed (the first
    shipped defaults) record only kind, map shape and latent size: they still
    describe their map, but cannot be rebuilt from the spec.
    """

    kind: str  # "desom1" (cutouts) or "desom2" (histo-vectors)
    map_shape: tuple[int, int]
    latent_dim: int
    input_shape: tuple[int, ...] = ()  # (1, 32, 32) for DESOM-1; (n_inputs,) for DESOM-2
    layers: tuple[int, ...] = ()
    dense_units: int = 0  # DESOM-1: the dense layer before the latent space
    desom1_version: str | None = None  # DESOM-2: the DESOM-1 whose histo-vectors it reads
    transform: str | None = None  # DESOM-2: its input transform (desom2.TRANSFORMS)

    def __post_init__(self):
        object.__setattr__(self, "map_shape", tuple(int(v) for v in self.map_shape))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "layers", tuple(int(v) for v in self.layers))
        if self.kind not in KINDS:
            raise UserError(f"model kind must be one of {KINDS}, not {self.kind!r}")
        if len(self.map_shape) != 2 or min(self.map_shape) < 1:
            raise UserError(f"map_shape must be two positive integers, not {self.map_shape}")
        if self.latent_dim < 1:
            raise UserError(f"latent_dim must be positive, not {self.latent_dim}")
        expected = 3 if self.kind == "desom1" else 1
        if self.input_shape and len(self.input_shape) != expected:
            raise UserError(f"{self.kind} input_shape has {expected} dimension(s), not {self.input_shape}")

    @property
    def n_nodes(self) -> int:
        return self.map_shape[0] * self.map_shape[1]

    def build(self) -> "DESOM":
        """A fresh model of this architecture (randomly initialised)."""
        from desomspark.desom.model import DESOM, ConvAutoencoder, DenseAutoencoder

        if not self.input_shape or not self.layers:
            raise UserError(
                f"this {self.kind} spec records no architecture (input shape, layers): "
                f"it describes a map but cannot rebuild the model"
            )
        if self.kind == "desom1":
            ae = ConvAutoencoder(self.latent_dim, self.layers, self.dense_units, size=self.input_shape[-1])
        else:
            ae = DenseAutoencoder(self.input_shape[0], self.layers, self.latent_dim)
        return DESOM(ae, self.map_shape, self.latent_dim, spec=self)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """The spec in ``d`` (other keys, e.g. more MLflow metadata, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def desom1_spec(cfg) -> ModelSpec:
    """The spec of DESOM-1 as configured (``Desom1Config``)."""
    return ModelSpec(
        "desom1",
        tuple(cfg.map_shape),
        cfg.latent_dim,
        (1, CUTOUT_SIZE, CUTOUT_SIZE),
        tuple(cfg.conv_channels),
        cfg.dense_units,
    )
