"""Prompt sets: the table and its hashes (`table`), which rows do which job (`splits`), the
synthetic tasks (`synthetic`), users' own files (`files`), a model's framing (`framing`).

    >>> from probebench.prompts import SyntheticTaskSpec, build_synthetic, row_roles
    >>> df = build_synthetic(SyntheticTaskSpec(name="sentiment", kind="sentiment", n_train=8, n_test=4))
    >>> int(row_roles(df, salt="s", map_fraction=0.25).test_N.sum())
    4
"""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("table", "splits", "synthetic", "files", "framing"))
