"""The cell table: its contract (`schema`), normalized effects (`normalize`), per-cell statistics
(`table`), flags and the scoring rule (`rules`), matrices, ProbeScore and headline metrics
(`summary`), the training-seed spread (`spread`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("schema", "normalize", "table", "rules", "summary", "spread"))
