"""Shared helpers for *The Geometry of Trained Deep Networks*.

The package is small on purpose: notebooks explain and plot; everything worth
testing lives here.  Sub-modules, one per idea:

- :mod:`utils.profiles` -- ``quick`` (CPU) and ``full`` (GPU) experiment scales.
- :mod:`utils.data`     -- datasets as device-resident tensors.
- :mod:`utils.train`    -- a seeded batch iterator and :func:`utils.train.fit`.
- :mod:`utils.models`   -- the networks the chapters train.
- :mod:`utils.metrics`  -- pure geometry metrics (tensors in, numbers out).
- :mod:`utils.plotting` -- one figure style for the whole book.
- :mod:`utils.reproduce` -- ``python -m utils.reproduce EXPERIMENT`` writes JSON.
"""

__version__ = "0.1.0"
