"""Pretrained weights into plain Hugging Face directories (`convert`): a GGUF (also one an installed
package ships) or a snapshot, dequantized and re-saved with a model card, so that every model
loads through the same `AutoModelForCausalLM` path."""

from probebench._compat import lazy_face

__getattr__, __dir__ = lazy_face(__name__, ("convert",))
