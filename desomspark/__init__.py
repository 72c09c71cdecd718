"""desomspark: sort survey exposures by image quality with DESOM, at survey scale.

One exposure travels through one subpackage per stage:

    ingest/      FITS file -> CCDs -> sep sources -> 32x32 cutouts, QA numbers   (pure numpy/sep)
    desom/       DESOM-1 and DESOM-2: model, training loop, mapping             (pure torch)
    stages/      the Spark jobs: ingest, train_desom1, histovectors, train_desom2, assign, nightly, watch
    registry/    MLflow: runs, registered models as typed records, champions
    lake/        where the tables live (layout, commits), their schema, read queries
    serve/       the console, the report, label/export/similar/filter, plots, drift
    evaluation/  simulate, evaluate against truth and baselines, the demo

``cli`` is the command line, ``config`` every setting, ``errors`` the errors a
user sees, ``logs`` the command line's logging.
"""

__version__ = "0.1.0"
