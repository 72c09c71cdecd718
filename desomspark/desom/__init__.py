"""DESOM, the model side: pure torch/numpy, importable on a bare GPU host (no Spark, MLflow or sep).

``spec``             :class:`~desomspark.desom.spec.ModelSpec`: what fixes an architecture (no torch import)
``model``            DESOM (autoencoder + SOM), built from its spec
``train``            the training loop, DDP, checkpoints (``python -m desomspark.desom.train job.json``)
``metrics``          quantization and topographic errors, purity, NMI
``mapping``          cutouts or inputs -> nodes, CPU or GPU, fed from pinned buffers
``exposure_mapper``  DESOM-2 with its input normalisation inside the graph (histo-vector -> cell)
"""
