"""Models: loading a Hugging Face directory or id (`load`), activations and clean margins at the
matched checkpoint (`extract`), ablation effects (`ablate`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("load", "extract", "ablate",))
