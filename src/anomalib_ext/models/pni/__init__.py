"""PNI (ICCV 2023): position- and neighbourhood-conditioned normal-feature distributions (issue 13).

Being built: the vectorised distributions and score (:mod:`.distributions`) are here; the Lightning model,
the refinement network and the registration follow, so ``PNI`` is not exported from
:mod:`anomalib_ext.models` yet.
"""
