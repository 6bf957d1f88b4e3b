"""ProbeBench leaderboard entries: the CrossModelTransfer schema and bundle ids (`schema`), the
entries and provenance the emit stage writes (`entries`), the site's TypeScript file (`sitefile`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("schema", "entries", "sitefile",))
