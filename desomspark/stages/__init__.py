"""The Spark glue: each stage reads the lake, runs the pure code of its subpackage, commits its tables.

``ingest``         FITS -> exposures/, ccds/, cutouts/, rejects/   (CCDs in a few tasks per core)
``train_desom1``   cutouts/ -> registered ``desom1`` (TorchDistributor, DDP)
``histovectors``   cutouts/ -> histovectors/                       (DESOM-1 in a UDF)
``train_desom2``   histovectors/ -> registered ``desom2``
``assign``         histovectors/ -> assignments/                   (DESOM-2 in a UDF)
``verdicts``       assignments/ + labels -> verdicts/              (pandas, no Spark)
``nightly``        ingest -> histovectors -> assign with the champions, one night
``watch``          the same per micro-batch of a streaming query (the live night)
``spark``          the Spark session every command builds
"""
