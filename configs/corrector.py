"""Corrector training configs (ml_collections): the inverter's config of the same variant, plus what the
corrector adds. It trains on (e, x⁰, ê⁰) -> x, where x⁰ is the frozen inverter's greedy hypothesis and ê⁰ its
embedding, cached beside the dataset (`v2t data hypotheses`; computed on first use).

    v2t export --workdir runs/inverter_cpu_small --output bundles/inverter_cpu_small
    v2t train --config configs/corrector.py:cpu_small --workdir runs/corrector_cpu_small \
        --config.inverter=bundles/inverter_cpu_small

Variants: tiny (tests), cpu_small, gpu, base, paper, as in configs/inverter.py. The paper's corrector starts from
the pretrained T5 as the inverter does (not from the inverter's weights) and reads its hypotheses in T5's vocabulary:

    v2t export --workdir runs/inverter_paper --output bundles/inverter_paper
    v2t train --config configs/corrector.py:paper --workdir runs/corrector_paper \
        --config.inverter=bundles/inverter_paper --config.t5.init=~/models/t5-base \
        --config.embedder=~/models/gtr-t5-base --config.data.corpus=nq_passages.txt
"""

from pathlib import Path

import ml_collections

from v2t_jax.training import config_loading


def get_config(arg: str = "cpu_small") -> ml_collections.ConfigDict:
    c = config_loading.load(f"{Path(__file__).with_name('inverter.py')}:{arg}")
    c.model = "corrector"
    c.inverter = ""  # model bundle of the inverter whose hypotheses the corrector learns to correct
    c.init_from_inverter = True  # start T5 and the e/ê projections from the inverter's weights (same shape)
    c.drop_exact = True  # skip training passages the inverter already recovers exactly (as the reference does)
    c.dropout_rate = 0.0  # of the three embedding projections (vec2text 0.0.13: 0)
    c.ignore_hypothesis_embedding = False  # the "no feedback" ablation
    c.training_noise = 0.0  # Gaussian noise on e and ê in training (vec2text 0.0.13: 0; later versions 1e-5)
    del c["noise_level"]
    c.init_token_embeddings = "random"  # it starts from the inverter's weights (init_from_inverter) instead
    if arg == "paper":
        c.init_from_inverter = False  # from the pretrained T5 (config.t5.init), as the paper's corrector
    return c
