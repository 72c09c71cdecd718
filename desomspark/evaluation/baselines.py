"""The clusterers of the other source documents, run on the same exposures as DESOM.

Each baseline sees one image per exposure: the full-resolution window that
ingest keeps (one CCD near the focal-plane centre, uint8), binned 2x2 and
cropped to ``IMAGE_SIDE`` pixels: enough stars and enough resolution for
trails and donuts to show.  DESOM sees every sampled source of every CCD
instead, which is the point of its two-level design.

* pixel PCA + k-means; PCA + agglomerative (Ward) and affinity propagation
  (sdss_clustering, document 002);
* a convolutional autoencoder's latent + k-means (document 004);
* a variational autoencoder's mean latent + k-means (Galaxy_Zoo, document 003).

All take the number of clusters (affinity propagation: its preference is
searched to come as close to it as it can).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import AffinityPropagation, AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import euclidean_distances
from torch import nn

from desomspark.desom.model import ConvAutoencoder

_LOG = logging.getLogger(__name__)


IMAGE_SIDE = 192


@dataclass(frozen=True)
class BaselineConfig:
    pca_components: int = 50
    latent_dim: int = 32
    channels: tuple[int, ...] = (8, 16, 32, 32)
    dense_units: int = 256
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0


def exposure_image(window: np.ndarray | None, side: int = IMAGE_SIDE) -> np.ndarray:
    """A window (uint8, any size) -> (side, side) float32 in [0, 1]: 2x2 binned, centre crop, zero padded."""
    out = np.zeros((side, side), dtype=np.float32)
    if window is None:
        return out
    h, w = (window.shape[0] // 2) * 2, (window.shape[1] // 2) * 2
    binned = window[:h, :w].astype(np.float32).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) / 255.0
    y0, x0 = max(0, (binned.shape[0] - side) // 2), max(0, (binned.shape[1] - side) // 2)
    crop = binned[y0 : y0 + side, x0 : x0 + side]
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out


def pca_features(images: np.ndarray, n_components: int, seed: int = 0) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    n = max(1, min(n_components, len(flat) - 1, flat.shape[1]))
    return PCA(n_components=n, random_state=seed).fit_transform(flat)


def kmeans(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)


def agglomerative(features: np.ndarray, k: int) -> np.ndarray:
    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(features)


def affinity_propagation(features: np.ndarray, k: int, seed: int = 0, tries: int = 12) -> np.ndarray:
    """Affinity propagation with its preference bisected towards ``k`` clusters."""
    # computed once (n^2 floats, not n^2 x d) and handed to every try
    similarity = -euclidean_distances(features, squared=True)
    off_diagonal = similarity[~np.eye(len(features), dtype=bool)]
    low, high = float(off_diagonal.min()) * 2, float(np.median(off_diagonal))  # few ... many clusters
    best = None
    for _ in range(tries):
        preference = (low + high) / 2
        labels = AffinityPropagation(
            preference=preference, damping=0.8, random_state=seed, max_iter=500, affinity="precomputed"
        ).fit_predict(similarity)
        n = len(np.unique(labels))
        if best is None or abs(n - k) < abs(len(np.unique(best)) - k):
            best = labels
        if n == k:
            break
        if n > k:
            high = preference
        else:
            low = preference
    return best


class _Vae(nn.Module):
    """A variational autoencoder around the conv autoencoder: encoder -> (mu, log variance) -> decoder."""

    def __init__(self, cfg: BaselineConfig, side: int):
        super().__init__()
        self.ae = ConvAutoencoder(cfg.latent_dim, cfg.channels, cfg.dense_units, size=side)
        self.mu = nn.Linear(cfg.latent_dim, cfg.latent_dim)
        self.log_var = nn.Linear(cfg.latent_dim, cfg.latent_dim)

    def encode(self, x):
        h = torch.relu(self.ae.encode(x))
        return self.mu(h), self.log_var(h)

    def forward(self, x):
        mu, log_var = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return self.ae.decode(z), mu, log_var


def autoencoder_latent(images: np.ndarray, cfg: BaselineConfig, variational: bool) -> np.ndarray:
    """Train a (variational) conv autoencoder on ``images`` (n, side, side) and return their latent (mean)."""
    torch.manual_seed(cfg.seed)
    side = images.shape[-1]
    model = (
        _Vae(cfg, side)
        if variational
        else ConvAutoencoder(cfg.latent_dim, cfg.channels, cfg.dense_units, size=side)
    )
    x = torch.as_tensor(images[:, None], dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            xb = x[idx]
            if variational:
                rec, mu, log_var = model(xb)
                kl = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(1).mean() / xb[0].numel()
                loss = ((rec - xb) ** 2).mean() + kl
            else:
                loss = ((model.decode(model.encode(xb)) - xb) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        latent = model.encode(x)[0] if variational else model.encode(x)
    return latent.numpy()


def run_baselines(
    images: np.ndarray, k: int, cfg: BaselineConfig = BaselineConfig()
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per baseline, by name: (cluster of each image, the features it clustered)."""
    features = pca_features(images, cfg.pca_components, cfg.seed)
    out = {
        "pixel PCA + k-means": (kmeans(features, k, cfg.seed), features),
        "PCA + agglomerative (Ward)": (agglomerative(features, k), features),
        "PCA + affinity propagation": (affinity_propagation(features, k, cfg.seed), features),
    }
    _LOG.info("evaluate: training the conv autoencoder baseline")
    latent = autoencoder_latent(images, cfg, variational=False)
    out["conv AE + k-means"] = (kmeans(latent, k, cfg.seed), latent)
    _LOG.info("evaluate: training the VAE baseline")
    latent = autoencoder_latent(images, cfg, variational=True)
    out["VAE latent + k-means"] = (kmeans(latent, k, cfg.seed), latent)
    return out
