"""The target side of a cell: label-free direction maps and their nulls (`maps`), and which
directions each target ablates (`plan`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("maps", "plan",))
