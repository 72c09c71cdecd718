"""Inputs to map nodes: cutouts to DESOM-1 nodes and vectors to DESOM-2 cells, on CPU or GPU.

The histo-vector and assignment UDFs call these functions on each batch; they import only numpy, pandas and
torch, so that they run (and are
benchmarked by ``bench/gpu_check.py``) on a GPU host without Spark or MLflow.

Cutouts travel as the lake stores them, uint8 (a quarter of float32's
bytes), and are scaled to [0, 1] on the device.  On a GPU they go through
two pinned host buffers: while the GPU maps one chunk, the host copies the
next into the other buffer, and each chunk crosses to the device with a
non-blocking copy.  Nodes stay on the device until the last chunk is done,
so a batch costs one synchronisation.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from desomspark.desom.model import as_input, split_inference
from desomspark.ingest.cutout import decode_uint8

_LOG = logging.getLogger(__name__)

#: cutouts per forward pass on a GPU (about 0.6 GB of activations for DESOM-1)
GPU_CHUNK = 32768
#: cutouts per forward pass on a CPU (keeps activations in cache-sized pieces)
CPU_CHUNK = 4096
#: GPU chunks are padded to a multiple of this, so cuDNN tunes a few shapes, not one per batch tail
_PAD = 1024


def _padded(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`_PAD`."""
    return -(-n // _PAD) * _PAD


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _scaled(chunk: torch.Tensor) -> torch.Tensor:
    """(n, 32, 32) stored cutouts -> (n, 1, 32, 32) float32 model input in [0, 1]."""
    return as_input(chunk).float().unsqueeze(1)


@torch.no_grad()
def cutout_nodes(model, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """Best-matching DESOM-1 node of each cutout.

    Parameters
    ----------
    model : torch.nn.Module
        A served DESOM-1 (:class:`desomspark.desom.model.DesomInference` or its
        exported graph), on the device where it should run.
    pixels : numpy.ndarray
        (n, 32, 32) cutouts, uint8 as stored (value / 255) or float in [0, 1].
    batch_size : int, optional
        Cutouts per forward pass (default :data:`GPU_CHUNK` on a GPU,
        :data:`CPU_CHUNK` on a CPU).

    Returns
    -------
    numpy.ndarray
        int64 node index of each cutout (row-major on the map).
    """
    device = _device_of(model)
    if len(pixels) == 0:
        return np.zeros(0, np.int64)
    if device.type == "cuda":
        return _cuda_nodes(model, pixels, batch_size or GPU_CHUNK, device)
    size = batch_size or CPU_CHUNK
    # np.array copies: a chunk of Arrow's read-only buffer becomes a tensor torch may own
    nodes = [
        split_inference(model(_scaled(torch.from_numpy(np.array(pixels[s : s + size])))))[0]
        for s in range(0, len(pixels), size)
    ]
    return torch.cat(nodes).numpy()


def _cuda_nodes(model, pixels: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    torch.backends.cudnn.benchmark = True  # fixed (padded) shapes: let cuDNN pick its fastest kernels
    n = len(pixels)
    size = min(size, _padded(n))
    dtype = torch.from_numpy(np.empty(0, pixels.dtype)).dtype  # not from pixels: Arrow's are read-only
    staging = [torch.empty((size, *pixels.shape[1:]), dtype=dtype).pin_memory() for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]
    nodes = torch.empty(n, dtype=torch.long, device=device)
    for k, start in enumerate(range(0, n, size)):
        m = min(size, n - start)
        slot = k % 2
        if copied[slot] is not None:
            copied[slot].synchronize()  # the device has read this buffer: it may be refilled
        host = staging[slot]
        host[:m].numpy()[...] = pixels[start : start + m]
        padded = _padded(m)
        if padded > m:
            host[m:padded].zero_()
        chunk = host[:padded].to(device, non_blocking=True)
        copied[slot] = torch.cuda.Event()
        copied[slot].record()
        nodes[start : start + m] = split_inference(model(_scaled(chunk)))[0][:m]
    return nodes.cpu().numpy()


def batch_nodes(model, batch) -> np.ndarray:
    """Nodes of an Arrow record batch's ``pixels`` column, as the histo-vector UDF receives it.

    The cutout bytes are read in place from the Arrow buffer (no copy, no
    Python object per cutout) and copied once, into the pinned buffer.
    """
    return cutout_nodes(model, decode_uint8(batch.column("pixels")))


@torch.no_grad()
def map_inputs(mapper, x):
    """(node, latent distance, latent vector) of raw inputs through a served model, as numpy arrays.

    For DESOM-2, ``x`` is (n, bins) or, for a model trained with quality
    numbers, (n, bins + len(qa_inputs)) as :func:`queries.input_matrix` makes it.
    """
    device = _device_of(mapper)
    node, dist, z = split_inference(mapper(torch.as_tensor(x, dtype=torch.float32, device=device)))
    return node.cpu().numpy(), dist.cpu().numpy(), z.cpu().numpy()
