"""From a FITS file to cutouts, pure numpy/astropy/sep (no Spark): one exposure's first stage.

``fitsio``    scan a file, read one CCD HDU (compression, masks, raw frames), rejects with reasons
``sections``  overscan correction, trimming and segment assembly of raw frames
``camera``    camera profiles (pixel scale, saturation, focal-plane positions)
``detect``    sep background and extraction, sampling, trail tiles: one CCD's result
``cutout``    32x32 cutouts, their normalisation and uint8 encoding
``qa``        the classical quality numbers from the same catalogue

The Spark job that runs these per CCD is :mod:`desomspark.stages.ingest`.
"""
