"""Probes: fitting and the saved artifact (`fit`), foreign probe formats and the model they are
checked against (`foreign`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("fit", "foreign",))
