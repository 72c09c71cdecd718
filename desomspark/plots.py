"""Pictures astronomers look at (matplotlib, PNG)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def mosaic(images: np.ndarray, map_shape: tuple[int, int], gap: int = 1) -> np.ndarray:
    """Tile (rows*cols, h, w) images into one array, node (0, 0) at the top left, NaN gaps."""
    rows, cols = map_shape
    n, h, w = images.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for k in range(min(n, rows * cols)):
        r, c = divmod(k, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = images[k]
    return out


def prototype_map(decoded: np.ndarray, map_shape: tuple[int, int], path, title: str = "DESOM-1 prototypes") -> str:
    """The decoded prototypes as a map (paper Figure 6); returns ``path``."""
    tiles = np.asarray(decoded).reshape(len(decoded), *np.asarray(decoded).shape[-2:])
    image = mosaic(tiles, map_shape)
    rows, cols = map_shape
    fig, ax = plt.subplots(figsize=(max(4, cols * 0.4), max(4, rows * 0.4)), dpi=100)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([(c + 0.5) * image.shape[1] / cols for c in range(0, cols, 5)], range(0, cols, 5))
    ax.set_yticks([(r + 0.5) * image.shape[0] / rows for r in range(0, rows, 5)], range(0, rows, 5))
    ax.set_xlabel("node column")
    ax.set_ylabel("node row")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
