"""What differs between training an inverter and a corrector, owned by one object per model kind, built once.

    task = tasks.build(config, embedder, vocab)     # decodes config now: model config, module, how params start
    task = tasks.load(config)                       # the same, loading the embedder and vocabulary it names
    loss, metrics = task.loss_fn(params, batch, rng)
    ids = task.predict_batch(params, batch)         # greedy: the hypothesis, or one greedy correction
    model, provenance = task.export(params)         # an inference model (api.Vec2Text)

The trainer (`train.py`, past its entry), `v2t export` and the benchmarks receive the task (`load`, `run_config`,
`benchmark_pair`) and never read the config: which
model config and Flax module to build, which batch keys it reads and what it encodes from them, its loss and
predictions, what must exist before training (the corrector's cached hypotheses of a frozen inverter, whose
bundle is checked and loaded once), how its parameters start, what its evaluation adds, and how a trained run
becomes an inference model. Adding a model kind (another corrector loss, say) is one subclass in `TASKS`.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from v2t_jax.models import correctors, inverters
from v2t_jax.search import decoding
from v2t_jax.errors import TrainingError
from v2t_jax.models import embedders
from v2t_jax.training import warm_start
from v2t_jax.models import t5 as t5_lib

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What a task's model shapes need of the embedder and the vocabulary, where neither is loaded (abstract
    builds, benchmarks of random weights): `build(config, Shapes(384, 30522))`."""

    dim: int  # the embedding width
    size: int  # vocabulary size
    pad_id: int = 0
    eos_id: int = 1
    in_graph: bool = True


@dataclasses.dataclass(frozen=True)
class Init:
    """How a fresh run's parameters start (decoded from config.init_*; see `Task.initial_params`)."""

    from_bundle: Path | None = None  # config.init_from: this kind's parameters of a bundle (fine-tuning)
    token_embeddings: str = "random"  # or "embedder": T5's token embeddings from the embedder's own
    layers: str = "random"  # or "embedder": both stacks' layers from the embedder's (BERT2BERT)
    from_inverter: bool = False  # the corrector: T5 and projections from its inverter's
    pretrained_t5: Path | None = None  # config.t5.init: a Hugging Face T5 folder (shape, weights, vocabulary)

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> Init:
        how, layers = config.get("init_token_embeddings", "random"), config.get("init_layers", "random")
        for key, value in (("init_token_embeddings", how), ("init_layers", layers)):
            if value not in ("random", "embedder"):
                raise TrainingError(f"{key} must be random or embedder, got {value!r}")
        bundle = Path(config.init_from).expanduser() if config.get("init_from") else None
        t5 = warm_start.pretrained_t5_folder(config)
        if t5 is not None and (how, layers) != ("random", "random"):
            raise TrainingError("config.t5.init starts T5 from its folder: leave init_token_embeddings and "
                                "init_layers at random")  # fmt: skip
        from_inverter = bool(config.get("init_from_inverter", False)) and t5 is None
        return cls(bundle, how, layers, from_inverter, t5)


class Task:
    """An inverter run, decoded from its config once (`build`): the model config and Flax module, how its
    parameters start, its loss and greedy predictions, and how a trained run becomes an inference model. The
    trainer (`train.py`), `v2t export` and the benchmarks ask the task, never the config; `CorrectorTask`
    overrides what the corrector adds. Adding a model kind is one subclass registered in `TASKS`."""

    name = "inverter"
    config_type: type = inverters.InverterConfig
    module_type: type = inverters.Inverter
    batch_extra: tuple[str, ...] = ()  # batch keys beyond embeddings, labels, mask

    def __init__(self, config: ml_collections.ConfigDict, embedder, vocab):
        self.embedder = embedder  # an embedders.Embedder, or `Shapes` (no weights: abstract builds only)
        self.vocab = vocab  # a vocabulary.Vocabulary, or the same `Shapes`
        self.embedder_name = str(config.embedder)
        self.max_length = int(config.max_length)  # embedder tokens of a passage
        self.init = Init.of(config)
        t5 = t5_config(config, vocab.size, vocab.pad_id, vocab.eos_id)
        common = dict(t5=t5, embed_dim=embedder.dim, num_repeat_tokens=config.num_repeat_tokens)
        self.model_config = self._model_config(config, common)
        self.model = self.module_type(self.model_config)

    def _model_config(self, config: ml_collections.ConfigDict, common: dict):
        return inverters.InverterConfig(**common, dropout_rate=config.dropout_rate, noise_level=config.noise_level)

    # --------------------------------------------------------------------------- the model

    def model_inputs(self, batch: dict) -> tuple:
        """What the model encodes from a batch (here: the target embedding e)."""
        return (batch["embeddings"],)

    @property
    def batch_keys(self) -> tuple[str, ...]:
        return ("embeddings", "labels", "mask") + self.batch_extra

    def dummy_batch(self, dec_len: int | None = None) -> dict:
        """A one-row batch of zeros of every key the model reads (initialisation)."""
        dec_len = dec_len or self.max_length - 1
        e, ids = jnp.zeros((1, self.model_config.embed_dim), jnp.float32), jnp.zeros((1, dec_len), jnp.int32)
        return {"embeddings": e, "hyp_embeddings": e, "hyp_ids": ids, "labels": ids, "mask": ids}

    def init_variables(self, rng, dec_len: int | None = None):
        """The model's variables (boxed with their logical axes) for `rng`."""
        batch = self.dummy_batch(dec_len)
        return self.model.init(rng, *self.model_inputs(batch), batch["labels"])

    def loss_fn(self, params, batch: dict, rng) -> tuple[Array, dict]:
        """(loss, metrics) of a training batch, with dropout and the model's noise drawn from `rng`."""
        r_drop, r_noise = jax.random.split(rng)
        dec_in = t5_lib.shift_right(batch["labels"], self.model_config.t5.decoder_start_token_id)
        logits = self.model.apply(
            {"params": params}, *self.model_inputs(batch), dec_in, deterministic=False,
            rngs={"dropout": r_drop, "noise": r_noise},
        )  # fmt: skip
        return inverters.cross_entropy(logits, batch["labels"], batch["mask"])

    def eval_metrics(self, params, batch: dict) -> dict:
        """loss, token_accuracy and tokens of a batch, without dropout or noise."""
        dec_in = t5_lib.shift_right(batch["labels"], self.model_config.t5.decoder_start_token_id)
        logits = self.model.apply({"params": params}, *self.model_inputs(batch), dec_in)
        return inverters.cross_entropy(logits, batch["labels"], batch["mask"])[1]

    def predict_batch(self, params, batch: dict, max_length: int | None = None) -> Array:
        """Greedy ids [b, max_length] (default: the vocabulary's length): the inverter's hypothesis, or one
        greedy correction of the batch's hypotheses. (The multi-step search is `drivers.invert`.)"""
        model, v = self.model, {"params": params}
        max_length = max_length or self.vocab.length
        inputs = self.model_inputs(batch)
        cache = model.apply(v, *inputs, max_length, method=type(model).init_cache)

        def tokens_to_logits(ids, cache):
            return model.apply(v, ids, cache, method=type(model).decode_step)

        start = self.model_config.t5.decoder_start_token_id
        return decoding.greedy(tokens_to_logits, cache, inputs[0].shape[0], max_length, start, self.vocab.eos_id, start)

    # --------------------------------------------------------------------------- before and around training

    def prepare(self, dataset) -> None:
        """Work that must exist before the mesh is built (nothing for the inverter); `dataset()` gives the
        (builder, targets folder, the `v2t data prepare` command) of the config's data."""

    def check_run(self, workdir: Path) -> None:
        """Refuses a run this task cannot continue or train, before any data is read."""

    def attach(self, tdir: Path, data: dict) -> None:
        """Adds what this task reads to each split (`train.SplitData`)."""

    def host_batch(self, split_data, idx: np.ndarray) -> dict:
        """This task's batch keys for rows `idx` of a split, as host arrays."""
        return {}

    def initial_params(self, params, shardings):
        """The parameters a fresh run starts from: a bundle's model of this kind (`config.init_from`: fine-tuning,
        e.g. with noise), or T5 from a pretrained Hugging Face folder (`config.t5.init`), or as initialised, with
        the T5 token embeddings taken from the embedder's own (`config.init_token_embeddings=embedder`), or both
        stacks' layers too (`config.init_layers=embedder`)."""
        if self.init.from_bundle is not None:
            return warm_start.from_bundle(params, self.init.from_bundle, self.name, shardings)
        if self.init.pretrained_t5 is not None:
            return warm_start.pretrained_t5(params, self.init.pretrained_t5, self.model_config.t5, shardings)
        if self.init.layers == "embedder":  # includes the token embeddings, at the embedder's own scale
            return warm_start.embedder_layers(params, self.model_config.t5, self.embedder, self.vocab, shardings)
        if self.init.token_embeddings == "embedder":
            return warm_start.embedder_token_embeddings(params, self.embedder, self.vocab, shardings)
        return params

    def rows_note(self, train_data, rows: np.ndarray) -> str:
        return ""

    def eval_extra(self, val_data, scorer) -> dict:
        """Scores logged beside the evaluation of the first len(scorer) validation rows (`scorer`: their
        `evaluate.Evaluator`)."""
        return {}

    # --------------------------------------------------------------------------- after training

    def export(self, params) -> tuple[Any, dict]:
        """(inference model, provenance to record) from a trained run's parameters."""
        from v2t_jax import api

        model = api.build(self.model_config, params, None, None, self.embedder, self.max_length, self.vocab)
        return model, {}


class CorrectorTask(Task):
    """(e, hypothesis x⁰, its embedding ê⁰) -> x, trained on a frozen inverter's cached greedy hypotheses."""

    name = "corrector"
    config_type = correctors.CorrectorConfig
    module_type = correctors.Corrector
    batch_extra = ("hyp_ids", "hyp_embeddings")

    def __init__(self, config: ml_collections.ConfigDict, embedder, vocab):
        super().__init__(config, embedder, vocab)
        self._inverter = str(config.get("inverter") or "")
        self.drop_exact = bool(config.get("drop_exact", False))
        self.batch_size = int(config.batch_size)
        self.progress = bool(config.get("progress", False))

    def _model_config(self, config: ml_collections.ConfigDict, common: dict):
        return correctors.CorrectorConfig(
            **common,
            dropout_rate=config.dropout_rate,
            ignore_hypothesis_embedding=config.ignore_hypothesis_embedding,
            training_noise=config.training_noise,
        )

    @functools.cached_property
    def inverter(self) -> Path:
        """The bundle whose inverter made (or will make) the hypotheses, checked once (`inverter_bundle`)."""
        return warm_start.inverter_bundle(self._inverter, self.embedder_name, self.max_length, not self.vocab.in_graph)

    @functools.cached_property
    def inverter_model(self):
        """The inverter bundle, loaded once (hypotheses and export)."""
        from v2t_jax import api

        return api.load_model(self.inverter)

    def model_inputs(self, batch: dict) -> tuple:
        hyp = batch["hyp_ids"]
        return batch["embeddings"], batch["hyp_embeddings"], hyp, hyp != self.model_config.t5.pad_token_id

    def prepare(self, dataset) -> None:
        """The inverter's hypotheses for train and validation, computed once and cached beside the targets
        (one process; with several, they must exist beforehand: `v2t data hypotheses`)."""
        from v2t_jax.data import targets
        from v2t_jax.training import hypotheses

        bundle = self.inverter  # checked before the data: the config may be what is wrong
        _, tdir, command = dataset()
        hdir = hypotheses.hypotheses_dir(tdir, bundle)
        if all((hdir / f"{s}.exact.npy").exists() for s in ("train", "validation")):
            return
        if jax.process_count() > 1:
            raise TrainingError(f"hypotheses not computed yet; run: v2t data hypotheses --inverter {bundle} ...")
        if not all(targets.exists(tdir, s) for s in ("train", "validation")):
            raise TrainingError(f"no target embeddings yet; run: {command}")
        print(f"v2t train: computing the inverter's hypotheses into {hdir}", file=sys.stderr)
        hypotheses.ensure(self.inverter_model, tdir, bundle, ("train", "validation"), progress=self.progress)

    def check_run(self, workdir: Path) -> None:
        """A corrector reads hypotheses in its own vocabulary, so its inverter must decode in the same one; and
        it continues only on the hypotheses of the inverter it started with (same weights)."""
        from v2t_jax.training import hypotheses

        if (
            not self.vocab.in_graph
            and self.inverter_model.vocab.tokenizer.get_vocab() != self.vocab.tokenizer.get_vocab()
        ):
            raise TrainingError(
                f"inverter {self.inverter} decodes in another vocabulary than this corrector's: give both the same "
                "tokenizer (config.t5.init / config.vocab)"
            )
        path = workdir / "inverter_hypotheses.txt"
        current = hypotheses.hypotheses_dir(Path(), self.inverter).name  # hypotheses-<digest>
        has_checkpoints = any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))
        if path.exists() and has_checkpoints and path.read_text().strip() != current:
            raise TrainingError(
                f"{workdir} trained on the hypotheses of other inverter weights ({path.read_text().strip()}); "
                "use a new --workdir for this inverter"
            )
        if jax.process_index() == 0:
            path.write_text(current + "\n")

    def attach(self, tdir: Path, data: dict) -> None:
        from v2t_jax.training import hypotheses

        hdir = hypotheses.hypotheses_dir(tdir, self.inverter)
        for split, d in data.items():
            try:
                h = hypotheses.load(hdir, split)
            except FileNotFoundError as e:
                raise TrainingError(f"{e}; run: v2t data hypotheses --inverter {self._inverter} ...") from e
            d.hyp_ids, d.hyp_embeddings = h["hyp_ids"], h["hyp_embeddings"]
            if split == "train" and self.drop_exact:
                d.rows = np.flatnonzero(~np.asarray(h["exact"]))
                if len(d.rows) < self.batch_size:
                    raise TrainingError(
                        f"only {len(d.rows)} training passages are not already exact, fewer than batch_size "
                        f"{self.batch_size}; set --config.drop_exact=false or use a smaller batch"
                    )

    def host_batch(self, split_data, idx: np.ndarray) -> dict:
        return {
            "hyp_ids": np.asarray(split_data.hyp_ids[idx], np.int32),
            "hyp_embeddings": np.asarray(split_data.hyp_embeddings[idx], np.float32),
        }

    def initial_params(self, params, shardings):
        if self.init.from_inverter and self.init.from_bundle is None:
            return warm_start.warm_start(params, self.inverter, shardings)
        return super().initial_params(params, shardings)

    def rows_note(self, train_data, rows: np.ndarray) -> str:
        return f" ({len(rows)} of {len(train_data.ids)} training rows not already exact)"

    def eval_extra(self, val_data, scorer) -> dict:
        """The same rows' cached hypotheses, scored as the outputs are: what one correction step starts from."""
        from v2t_jax import metrics

        n = len(scorer)
        hyps = [self.vocab.decode(r) for r in np.asarray(val_data.hyp_ids[:n])]
        cos = embedders.cosine(np.asarray(val_data.hyp_embeddings[:n]), np.asarray(val_data.embeddings[:n]))
        out = scorer.score(hyps, np.asarray(cos).tolist())
        out["example"] = metrics.normalize(hyps[0])
        return {f"hypothesis_{k}": v for k, v in out.items()}

    def export(self, params) -> tuple[Any, dict]:
        from v2t_jax import api

        inverter = self.inverter_model
        inv_cfg, inv_params = inverter.program.inverter, inverter.params["inverter"]
        model = api.build(inv_cfg, inv_params, self.model_config, params, self.embedder, self.max_length, self.vocab)
        return model, {"inverter": str(Path(self._inverter).expanduser().absolute())}


TASKS: dict[str, type[Task]] = {t.name: t for t in (Task, CorrectorTask)}


def build(config: ml_collections.ConfigDict, embedder, vocab) -> Task:
    """The task `config.model` names, with everything it reads of `config` decoded now (`embedder`: an
    `embedders.Embedder`, or `Shapes` for an abstract build; `vocab`: the decoders' `Vocabulary`, or the same
    `Shapes`)."""
    return kind_of(config)(config, embedder, vocab)


def kind_of(config: ml_collections.ConfigDict) -> type[Task]:
    """The task class `config.model` names (checked before anything loads)."""
    kind = TASKS.get(config.get("model"))
    if kind is None:
        raise TrainingError(f"config.model is {config.get('model')!r}; use {' or '.join(map(repr, TASKS))}")
    return kind


def build_abstract(config: ml_collections.ConfigDict, embed_dim: int, vocab_size: int, pad_id: int = 0,
                   eos_id: int = 1) -> Task:  # fmt: skip
    """`build` for shapes alone (no embedder or vocabulary loaded): abstract builds and benchmarks."""
    shapes = Shapes(embed_dim, vocab_size, pad_id, eos_id)
    return build(config, shapes, shapes)


def target_vocab(config: ml_collections.ConfigDict, embedder):
    """`config.vocab`: "embedder" (its WordPiece, in-graph re-embedding) or an external tokenizer folder; with
    `config.t5.init` (a pretrained T5), "embedder" means that folder's own tokenizer."""
    from v2t_jax import vocabulary

    try:
        if not own_vocabulary(config):
            return vocabulary.Vocabulary.of_embedder(embedder, config.max_length)
        # a pretrained T5 decodes in its own tokenizer unless config.vocab names another folder
        folder = config.vocab if config.vocab != "embedder" else warm_start.pretrained_t5_folder(config)
        return vocabulary.Vocabulary.from_folder(folder, config.max_length)
    except vocabulary.VocabularyError as e:
        raise TrainingError(str(e)) from None


def own_vocabulary(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` decodes in a vocabulary other than the embedder's (`target_vocab`): an external tokenizer
    folder, or a pretrained T5's own. Read off the config alone (`pretrained_t5_folder` checks the folder)."""
    return config.get("vocab", "embedder") != "embedder" or bool(config.t5.get("init"))


def load(config: ml_collections.ConfigDict) -> Task:
    """`build` with its embedder and decoder vocabulary loaded from `config` (the trainer, `v2t export`)."""
    kind = kind_of(config)  # (checked before the embedder loads)
    embedder = embedders.load_embedder(config.embedder)
    return kind(config, embedder, target_vocab(config, embedder))


def run_config(workdir: Path, inverter: str | None = None) -> tuple[ml_collections.ConfigDict, str | None]:
    """The config a `v2t train` run directory saved, for `load`: computing in float32 whatever the run trained
    in; `inverter`: for a corrector run, another inverter bundle in place of the one it trained on (same
    embedder and length, checked now). Returns it and the replaced inverter (None if none was)."""
    import json

    from v2t_jax import paths

    config = ml_collections.ConfigDict(json.loads((paths.run_folder(workdir) / "config.json").read_text()))
    trained_on = None
    if inverter is not None:
        if config.get("model") != "corrector":
            raise TrainingError(f"{workdir} trained an inverter: --inverter applies to a corrector run only")
        trained_on, config.inverter = config.inverter, str(inverter)
        warm_start.inverter_bundle(config.inverter, config.embedder, config.max_length, own_vocabulary(config))
    if "dtype" in config.t5:  # a bundle computes in float32 (runs on accelerators train in bfloat16)
        config.t5.dtype = "float32"
    return config, trained_on


def benchmark_pair(config: ml_collections.ConfigDict) -> tuple[Task, Task]:
    """An inverter and a corrector task of the shapes a corrector config trains (the inverter gets the same T5
    shape), with the embedder and vocabulary loaded, for benchmarks of random weights (`bench.random_model`)."""
    embedder = embedders.load_embedder(config.embedder)
    vocab = target_vocab(config, embedder)
    if not vocab.in_graph:
        raise ValueError("benchmarks need a model decoding in the embedder's vocabulary (vocab=embedder)")
    inv = ml_collections.ConfigDict(config.to_dict())
    inv.model, inv.noise_level, inv.dropout_rate = "inverter", 0.0, 0.1
    cor = ml_collections.ConfigDict(config.to_dict())
    cor.model = "corrector"
    for key, value in dict(ignore_hypothesis_embedding=False, training_noise=0.0, dropout_rate=0.0).items():
        cor[key] = cor.get(key, value)
    return Task(inv, embedder, vocab), CorrectorTask(cor, embedder, vocab)


# ------------------------------------------------------------------------------- the model and how it starts


def t5_config(config: ml_collections.ConfigDict, vocab_size: int, pad_id: int = 0, eos_id: int = 1):
    """The T5 config of `config.t5` (a named size and family, with its non-zero overrides), or of the pretrained
    folder `config.t5.init` (its config.json and weights decide the shape; the vocabulary's special ids)."""
    c = config.t5
    overrides = {
        k: c[k] for k in ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads") if c.get(k, 0)
    }
    folder = warm_start.pretrained_t5_folder(config)
    if folder is not None:
        if overrides:
            raise TrainingError(
                f"config.t5.init takes the shape from {folder}/config.json: leave t5.{', t5.'.join(overrides)} at 0"
            )
        cfg = warm_start.pretrained_t5_config(str(folder))
        if vocab_size > cfg.vocab_size:
            raise TrainingError(
                f"the decoder vocabulary has {vocab_size} tokens, the T5 in {folder} embeds {cfg.vocab_size}: use "
                "the folder's own tokenizer (config.vocab=embedder)"
            )
        return cfg.replace(dropout_rate=c.dropout_rate, pad_token_id=pad_id, decoder_start_token_id=pad_id,
                           eos_token_id=eos_id, dtype=c.get("dtype", "float32"))  # fmt: skip
    return t5_lib.t5_config(
        c.size,
        c.variant,
        vocab_size=vocab_size,
        dropout_rate=c.dropout_rate,
        pad_token_id=pad_id,
        decoder_start_token_id=pad_id,
        eos_token_id=eos_id,
        dtype=c.get("dtype", "float32"),
        **overrides,
    )
