"""The `probebench` command line (`main` holds the app; `zoo` and `leaderboard` are its sub-apps)."""

from probebench.cli.main import app

__all__ = ["app"]
