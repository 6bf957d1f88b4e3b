"""Files on disk: atomic I/O (`io`), the content-addressed cell store (`store`), pinned
snapshots (`pinned`), package versions (`environment`), the numeric reproduction check (`verify`),
dvc.yaml / dvc.lock read as plain data (`dvcfile`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("io", "store", "pinned", "environment", "verify", "dvcfile"))
