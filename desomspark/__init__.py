"""desomspark: sort survey exposures by image quality with DESOM, at survey scale.

One exposure travels through these modules, one stage each:

    simulate  -> fitsio -> detect/cutout -> ingest      (FITS -> cutouts/ in the lake)
    model     -> train                                  (DESOM-1 on cutouts/, MLflow)
    histovector                                         (cutouts -> 625-bin vector per exposure)
    model     -> train                                  (DESOM-2 on histovectors/)
    assign    -> nightly                                (vector -> DESOM-2 cell, label)

``schema`` defines every table, ``lake`` where they live, ``config`` every setting.
"""
__version__ = "0.1.0"
