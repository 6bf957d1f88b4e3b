"""The report page: numbers and CIs as text (`format`), the figures (`figures`), the HTML page
built from the stage outputs (`page`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("page", "format", "figures"))
