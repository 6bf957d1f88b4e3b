"""probebench: is this probe the same causal mechanism in another model?

Measures rho_CE = Pearson(delta_source, delta_target) of per-prompt token-margin effects of
ablating a probe direction in a source model and its transferred counterpart in a target.
"""

__version__ = "0.1.0"

from probebench import _compat

_compat.install()
