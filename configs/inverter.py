"""Inverter training configs (ml_collections).

    v2t data prepare
    v2t train --config configs/inverter.py:cpu_small --workdir runs/inverter_cpu_small
    v2t train --config configs/inverter.py:tiny --workdir /tmp/inv_tiny --config.num_steps=50

Variants:
  tiny       seconds: a 2+2-layer d=64 T5, batch 8; used by the tests
  cpu_small  hours on 2 CPU cores: T5 "tiny" shape (d 256, 4+4 layers), batch 64
  gpu        minutes on one H100/H200 (experiments/gpu_release.sh): T5 family (tied embeddings, ReLU), d 384
             = the embedder's width, 4+4 layers, ff 1024, 27.6M params (its int8 bundle and the corrector's fit the
             device's 64 MiB return), batch 512, bfloat16 compute, token embeddings from the embedder
  gpu_warm   gpu's budget in the "bert" layout (BERT2BERT): both stacks start from the embedder's own first 3
             transformer layers (d 384, 12 heads, ff 1536; 27.2M params, gpu's size), new cross-attention, BERT's
             masked-LM head on the tied WordPiece embedding
  base       the paper's shape: T5-base, batch 128 (accelerators)
  paper      the paper's recipe from pretrained weights: T5-base from a Hugging Face folder (its SentencePiece
             vocabulary decodes), the GTR-base embedder from a sentence-transformers folder, 32 tokens, Adam at
             2e-4, batch 128, warmup then linear decay, bfloat16, on a corpus of your passages (e.g. NQ's)

The paper recipe, on one GPU (the folders come from a model hub: t5-base, sentence-transformers/gtr-t5-base):

    v2t data prepare --corpus nq_passages.txt --embedder ~/models/gtr-t5-base --max-tokens 32
    v2t train --config configs/inverter.py:paper --workdir runs/inverter_paper \
        --config.t5.init=~/models/t5-base --config.embedder=~/models/gtr-t5-base \
        --config.data.corpus=nq_passages.txt

and on a multi-host TPU slice, the same command on every host (the batch is split over all chips of the mesh;
`--config.mesh.fsdp=N` shards the parameters too); the workdir is one place every host reads and writes (a gs://
bucket, with `pip install gcsfs`; or a shared folder). See docs/pods.md:

    v2t train --config configs/inverter.py:paper --workdir gs://bucket/inverter_paper ... --distributed auto

Then the corrector (configs/corrector.py:paper) on this inverter's hypotheses. sentence-transformers' GTR adds a
Dense layer and L2 normalisation to the encoder's mean pool; vec2text's published gtr-base models invert the mean
pool alone (import those with `v2t import vec2text`, which records it). To train for that, give as the embedder
a copy of the folder without modules.json (a bare encoder folder is read as mean pooling, unnormalised).
"""

import ml_collections


def get_config(arg: str = "cpu_small") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "inverter"
    c.embedder = "all-MiniLM-L6-v2"
    c.max_length = 32  # embedder tokens incl. [CLS]/[SEP]; the decoder emits max_length - 1
    c.vocab = "embedder"  # decode in the embedder's own WordPiece vocabulary
    # sources: names in `python -m v2t_jax.data.sources`, or ("all",); mixture: "default" (each source's
    # registry weight: technical documentation at 0.5), "uniform", or "name=weight,..." overrides
    c.data = ml_collections.ConfigDict(
        dict(sources=("wiki", "bbc", "sotu", "moby"), corpus="", data_dir="", seed=0, mixture="default")
    )
    c.t5 = ml_collections.ConfigDict(
        dict(
            size="tiny",
            variant="v1.1",
            d_model=0,
            d_kv=0,
            d_ff=0,
            num_layers=0,
            num_heads=0,
            num_decoder_layers=0,
            dropout_rate=0.1,
            dtype="float32",  # compute dtype: bfloat16 on accelerators (params and the loss stay float32)
            # a Hugging Face T5 / T5 v1.1 / Flan-T5 folder to start from: its config.json gives the shape (size,
            # variant and the numbers above are then unused), its weights the start, its tokenizer the vocabulary
            init="",
        )
    )  # 0 = the named size's value
    c.init_token_embeddings = "random"  # or "embedder": T5 token embeddings from the embedder's (same width)
    # or "embedder": encoder and decoder layers i start as the embedder's layer i, token and position embeddings
    # as its own (t5.variant="bert", the embedder's shape; a BERT-backbone embedder)
    c.init_layers = "random"
    c.num_repeat_tokens = 16
    c.dropout_rate = 0.1  # in the embedding transform
    c.noise_level = 0.0  # > 0: Gaussian noise on the embedding in training (a noise-aware attacker)
    c.init_from = ""  # a model bundle to start from (fine-tuning: same shapes), instead of a fresh initialisation
    c.batch_size = 64
    c.num_steps = 20_000
    c.train_minutes = 0.0  # > 0: time-boxed; stop at this wall-clock budget, learning rate decaying to 0 at it
    c.learning_rate = 1e-3
    c.warmup_steps = 500
    c.weight_decay = 0.0
    c.grad_clip = 1.0
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.seed = 0
    c.log_every = 50
    c.eval_every = 1000
    c.eval_batches = 4
    c.eval_samples = 256
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.progress = True

    if arg == "tiny":
        c.t5.update(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
        c.batch_size = 8
        c.num_steps = 20
        c.warmup_steps = 5
        c.log_every = 5
        c.eval_every = 10
        c.eval_batches = 2
        c.eval_samples = 16
        c.checkpoint_every = 5
    elif arg in ("gpu", "gpu_warm"):
        if arg == "gpu":
            c.t5.update(variant="t5", d_model=384, d_kv=64, d_ff=1024, num_layers=4, num_heads=6, dtype="bfloat16")
            c.init_token_embeddings = "embedder"
        else:
            c.t5.update(variant="bert", d_model=384, d_kv=32, d_ff=1536, num_layers=3, num_heads=12, dtype="bfloat16")
            c.init_layers = "embedder"
        c.data.sources = ("all",)
        c.batch_size = 512
        c.learning_rate = 1e-3
        c.warmup_steps = 300
        c.eval_every = 1000
        c.eval_samples = 512
        c.checkpoint_every = 1000
        c.log_every = 100
    elif arg in ("base", "paper"):  # the paper's shape and schedule
        c.t5.size = "base"
        c.batch_size = 128
        c.learning_rate = 2e-4
        c.warmup_steps = 2000
        c.num_steps = 200_000
        c.eval_every = 5000
        c.checkpoint_every = 2000
        if arg == "paper":  # from the user's three folders: each placeholder fails in one line until set
            c.embedder = "GTR_BASE_FOLDER"
            c.t5.update(variant="t5", init="T5_BASE_FOLDER", dtype="bfloat16")
            c.data.update(sources=(), corpus="PASSAGES_FILE")
            c.log_every = 100
    elif arg != "cpu_small":
        raise ValueError(
            f"unknown variant {arg!r} of configs/inverter.py; use tiny, cpu_small, gpu, gpu_warm, base or paper"
        )
    return c
