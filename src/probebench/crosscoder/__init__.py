"""Crosscoders for the base/IT audit (docs/design.md §8): model, training, checkpoint loading, latent statistics.

The audited claim ("median decoder cosine 0.965 vs median causal equivalence 0.616 on
Gemma-2-2B base/IT") rests on a crosscoder trained jointly on the layer-13 residual stream
of two models. This package holds one in-memory representation of such a crosscoder,
whatever checkpoint layout it came from, so that the cosines and the decoder vectors used
by the ablation audit are computed the same way for every source.

- `model`: BatchTopKCrossCoder, ReLUCrossCoder (the L1-trained layout), the scale convention;
- `training`: train_crosscoder (independent or shared decoder initialization);
- `loading`: load_crosscoder and one loader per public layout;
- `stats`: firing_frequency, latent_table, select_shared_latents, choose_latents.

Example:
    >>> from probebench.crosscoder import train_crosscoder, latent_table, firing_frequency
    >>> acts_NMD = torch.randn(256, 2, 16)
    >>> cc, _ = train_crosscoder(acts_NMD, n_latents=32, k=4, steps=10, batch_size=64, lr=1e-2, seed=0)
    >>> list(latent_table(cc, firing_frequency_F=firing_frequency(cc, acts_NMD)).columns)[:3]
    ['latent', 'decoder_cosine', 'relative_norm']
"""

import torch  # noqa: F401 - the docstring examples use it

from probebench.crosscoder.loading import (
    SCALE_FACTOR_KEYS,
    CrossCoderLoadError,
    load_crosscoder,
    load_dictionary_learning_state,
    load_native_state,
    load_wdec_layout,
)
from probebench.crosscoder.model import BatchTopKCrossCoder, CrossCoder, CrossCoderError, ReLUCrossCoder
from probebench.crosscoder.stats import (
    choose_latents,
    firing_frequency,
    latent_table,
    rel_norm_spread,
    select_shared_latents,
)
from probebench.crosscoder.training import DECODER_INITS, train_crosscoder

__all__ = [
    "BatchTopKCrossCoder",
    "CrossCoder",
    "CrossCoderError",
    "CrossCoderLoadError",
    "DECODER_INITS",
    "ReLUCrossCoder",
    "SCALE_FACTOR_KEYS",
    "choose_latents",
    "firing_frequency",
    "latent_table",
    "load_crosscoder",
    "load_dictionary_learning_state",
    "load_native_state",
    "load_wdec_layout",
    "rel_norm_spread",
    "select_shared_latents",
    "train_crosscoder",
]
