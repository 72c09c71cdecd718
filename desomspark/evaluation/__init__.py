"""Knowing how well it works: the simulator, scores against truth and baselines, the demo.

``simulate``   GalSim exposures of the quality classes (FITS on disk)
``evaluate``   purity, NMI, Good/Bad and neighbour accuracy beside the baselines
``baselines``  PCA + clusterers, conv AE / VAE + k-means, classical QA numbers
``demo``       a small night through the whole chain
"""
