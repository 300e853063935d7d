"""Data for every objective: `load_splits` (in `sources`) is the one entry point.

`sources` opens datasets (and parses the `name[train:N,test:M]` slice); `detection`, `retrieval`
and `messages` convert its rows into their samples.
"""

from .sources import load_splits

__all__ = ["load_splits"]
