"""Data for every objective: `load_splits` (in `splits`) is the one entry point.

`sources` opens datasets (and parses the `name[train:N,test:M]` slice); `detection`, `retrieval`,
`motion` and `messages` convert its rows into their samples; `splits` dispatches to them.
"""

from .splits import load_splits

__all__ = ["load_splits"]
