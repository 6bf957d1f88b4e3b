"""The embedded zoo: tiny causal LMs of real architecture families trained here (`train`); their
specs and family constants are configuration (`probebench.params.zoo`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("train",))
