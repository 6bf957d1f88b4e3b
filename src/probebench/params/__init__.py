"""params.yaml: the validated schema and `load_params` (`schema`), zoo specs and architecture
families (`zoo`), which torch devices exist here (`devices`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("schema", "zoo", "devices"))
