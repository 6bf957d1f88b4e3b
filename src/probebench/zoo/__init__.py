"""The embedded zoo: tiny causal LMs of real architecture families trained here (`train`), and the
LoRA instruction fine-tune of a real imported model (`lora`, trained on `instructions`), pinned
the same way; their specs and family constants are configuration (`probebench.params.zoo`)."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("train", "instructions", "lora"))
