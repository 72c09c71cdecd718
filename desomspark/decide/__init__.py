"""From a map to a decision: a verdict per exposure (pure pandas and numpy; the lake glue is
:mod:`desomspark.stages.verdicts`).

* :mod:`~desomspark.decide.labels` -- which label an exposure has (its own, its cell's, or one it
  inherited from an earlier map), and the labels a new map's cells are offered;
* :mod:`~desomspark.decide.teff` -- the effective-exposure-time factors operators decide with;
* :mod:`~desomspark.decide.vote` -- ``p_bad``: a kernel vote of the labelled exposures nearby in
  DESOM-2's latent space, calibrated by cross-validation, shrunk to the prior where labels are few;
* :mod:`~desomspark.decide.verdict` -- accept / review / retake, with the reason;
* :mod:`~desomspark.decide.active` -- which unlabelled cell to label next.
"""
