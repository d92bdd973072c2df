"""What differs between training an inverter and a corrector, owned by one object per model kind.

The trainer (`train.py`), `v2t export` and the benchmarks ask the config's `Task` instead of branching on
`config.model`: which model config and Flax module to build, which batch keys it reads and what it encodes
from them, what must exist before training (the corrector's cached hypotheses of a frozen inverter), how its
parameters start, what its evaluation adds, and how a trained run becomes an inference model. Adding a model
kind (another corrector loss, say) is one subclass registered in `TASKS`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from v2t_jax import correction, inversion
from v2t_jax.errors import V2TError
from v2t_jax.models import embedders
from v2t_jax.models import t5 as t5_lib


class TrainingError(V2TError, RuntimeError):
    """A run cannot start or continue; the message says what to do (raised as `train.TrainingError` too)."""


class Task:
    """The inverter's behaviour; `CorrectorTask` overrides what the corrector adds."""

    name = "inverter"
    config_type: type = inversion.InverterConfig
    module_type: type = inversion.Inverter
    batch_extra: tuple[str, ...] = ()  # batch keys beyond embeddings, labels, mask

    def model_config(self, config: ml_collections.ConfigDict, common: dict):
        return inversion.InverterConfig(**common, dropout_rate=config.dropout_rate, noise_level=config.noise_level)

    def make_model(self, cfg):
        return self.module_type(cfg)

    def model_inputs(self, model, batch: dict) -> tuple:
        """What the model encodes from a batch (here: the target embedding e)."""
        return (batch["embeddings"],)

    # --------------------------------------------------------------------------- before and around training

    def prepare(self, config: ml_collections.ConfigDict, dataset) -> None:
        """Work that must exist before the mesh is built (nothing for the inverter); `dataset()` gives the
        (builder, targets folder, the `v2t data prepare` command) of the config's data."""

    def check_run(self, config: ml_collections.ConfigDict, workdir: Path, vocab) -> None:
        """Refuses a run this task cannot continue or train, before any data is read."""

    def attach(self, config: ml_collections.ConfigDict, tdir: Path, data: dict) -> None:
        """Adds what this task reads to each split (`train.SplitData`)."""

    def host_batch(self, split_data, idx: np.ndarray) -> dict:
        """This task's batch keys for rows `idx` of a split, as host arrays."""
        return {}

    def initial_params(self, params, config: ml_collections.ConfigDict, embedder, vocab, shardings):
        """The parameters a fresh run starts from: a bundle's model of this kind (`config.init_from`: fine-tuning,
        e.g. with noise), or as initialised, with the T5 token embeddings taken from the embedder's own
        (`config.init_token_embeddings=embedder`), or both stacks' layers too (`config.init_layers=embedder`)."""
        if config.get("init_from"):
            return from_bundle(params, Path(config.init_from).expanduser(), self.name, shardings)
        how, layers = config.get("init_token_embeddings", "random"), config.get("init_layers", "random")
        for key, value in (("init_token_embeddings", how), ("init_layers", layers)):
            if value not in ("random", "embedder"):
                raise TrainingError(f"{key} must be random or embedder, got {value!r}")
        if layers == "embedder":  # includes the token embeddings, at the embedder's own scale
            return embedder_layers(params, config, embedder, vocab, shardings)
        if how == "embedder":
            return embedder_token_embeddings(params, embedder, vocab, shardings)
        return params

    def rows_note(self, train_data, rows: np.ndarray) -> str:
        return ""

    def eval_extra(self, val_data, scorer, vocab) -> dict:
        """Scores logged beside the evaluation of the first len(scorer) validation rows (`scorer`: their
        `evaluate.Evaluator`)."""
        return {}

    # --------------------------------------------------------------------------- after training

    def export_model(self, config: ml_collections.ConfigDict, cfg, params, embedder, vocab):
        """(inference model, provenance to record) from a trained run's parameters."""
        from v2t_jax import api

        return api.build(cfg, params, None, None, embedder, config.max_length, vocab), {}


class CorrectorTask(Task):
    """(e, hypothesis x⁰, its embedding ê⁰) -> x, trained on a frozen inverter's cached greedy hypotheses."""

    name = "corrector"
    config_type = correction.CorrectorConfig
    module_type = correction.Corrector
    batch_extra = ("hyp_ids", "hyp_embeddings")

    def model_config(self, config: ml_collections.ConfigDict, common: dict):
        return correction.CorrectorConfig(
            **common,
            dropout_rate=config.dropout_rate,
            ignore_hypothesis_embedding=config.ignore_hypothesis_embedding,
            training_noise=config.training_noise,
        )

    def model_inputs(self, model, batch: dict) -> tuple:
        hyp = batch["hyp_ids"]
        return batch["embeddings"], batch["hyp_embeddings"], hyp, hyp != model.config.t5.pad_token_id

    def prepare(self, config: ml_collections.ConfigDict, dataset) -> None:
        """The inverter's hypotheses for train and validation, computed once and cached beside the targets
        (one process; with several, they must exist beforehand: `v2t data hypotheses`)."""
        from v2t_jax import api
        from v2t_jax.data import hypotheses, targets

        bundle = inverter_bundle(config)  # checked before the data: the config may be what is wrong
        _, tdir, command = dataset()
        hdir = hypotheses.hypotheses_dir(tdir, bundle)
        if all((hdir / f"{s}.exact.npy").exists() for s in ("train", "validation")):
            return
        if jax.process_count() > 1:
            raise TrainingError(f"hypotheses not computed yet; run: v2t data hypotheses --inverter {bundle} ...")
        if not all(targets.exists(tdir, s) for s in ("train", "validation")):
            raise TrainingError(f"no target embeddings yet; run: {command}")
        print(f"v2t train: computing the inverter's hypotheses into {hdir}", file=sys.stderr)
        hypotheses.ensure(api.load_model(bundle), tdir, bundle, ("train", "validation"), progress=config.progress)

    def check_run(self, config: ml_collections.ConfigDict, workdir: Path, vocab) -> None:
        """A corrector reads hypotheses in the embedder's vocabulary, and continues only on the hypotheses of
        the inverter it started with (same weights)."""
        from v2t_jax.data import hypotheses

        if not vocab.in_graph:
            raise TrainingError(
                "the corrector reads the inverter's hypotheses in the embedder's vocabulary: vocab=embedder"
            )
        path = workdir / "inverter_hypotheses.txt"
        current = hypotheses.hypotheses_dir(Path(), inverter_bundle(config)).name  # hypotheses-<digest>
        has_checkpoints = any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*"))
        if path.exists() and has_checkpoints and path.read_text().strip() != current:
            raise TrainingError(
                f"{workdir} trained on the hypotheses of other inverter weights ({path.read_text().strip()}); "
                "use a new --workdir for this inverter"
            )
        if jax.process_index() == 0:
            path.write_text(current + "\n")

    def attach(self, config: ml_collections.ConfigDict, tdir: Path, data: dict) -> None:
        from v2t_jax.data import hypotheses

        hdir = hypotheses.hypotheses_dir(tdir, inverter_bundle(config))
        for split, d in data.items():
            try:
                h = hypotheses.load(hdir, split)
            except FileNotFoundError as e:
                raise TrainingError(f"{e}; run: v2t data hypotheses --inverter {config.inverter} ...") from e
            d.hyp_ids, d.hyp_embeddings = h["hyp_ids"], h["hyp_embeddings"]
            if split == "train" and config.drop_exact:
                d.rows = np.flatnonzero(~np.asarray(h["exact"]))
                if len(d.rows) < config.batch_size:
                    raise TrainingError(
                        f"only {len(d.rows)} training passages are not already exact, fewer than batch_size "
                        f"{config.batch_size}; set --config.drop_exact=false or use a smaller batch"
                    )

    def host_batch(self, split_data, idx: np.ndarray) -> dict:
        return {
            "hyp_ids": np.asarray(split_data.hyp_ids[idx], np.int32),
            "hyp_embeddings": np.asarray(split_data.hyp_embeddings[idx], np.float32),
        }

    def initial_params(self, params, config: ml_collections.ConfigDict, embedder, vocab, shardings):
        if config.init_from_inverter and not config.get("init_from"):
            return warm_start(params, inverter_bundle(config), shardings)
        return super().initial_params(params, config, embedder, vocab, shardings)

    def rows_note(self, train_data, rows: np.ndarray) -> str:
        return f" ({len(rows)} of {len(train_data.ids)} training rows not already exact)"

    def eval_extra(self, val_data, scorer, vocab) -> dict:
        """The same rows' cached hypotheses, scored as the outputs are: what one correction step starts from."""
        from v2t_jax import metrics

        n = len(scorer)
        hyps = [vocab.decode(r) for r in np.asarray(val_data.hyp_ids[:n])]
        cos = embedders.cosine(np.asarray(val_data.hyp_embeddings[:n]), np.asarray(val_data.embeddings[:n]))
        out = scorer.score(hyps, np.asarray(cos).tolist())
        out["example"] = metrics.normalize(hyps[0])
        return {f"hypothesis_{k}": v for k, v in out.items()}

    def export_model(self, config: ml_collections.ConfigDict, cfg, params, embedder, vocab):
        from v2t_jax import api

        inverter = api.load_model(inverter_bundle(config))
        inv_cfg, inv_params = inverter.program.inverter, inverter.params["inverter"]
        model = api.build(inv_cfg, inv_params, cfg, params, embedder, config.max_length, vocab)
        return model, {"inverter": str(Path(config.inverter).expanduser().absolute())}


TASKS: dict[str, Task] = {t.name: t for t in (Task(), CorrectorTask())}
_BY_CONFIG = {t.config_type: t for t in TASKS.values()}
_BY_MODULE = {t.module_type: t for t in TASKS.values()}


def for_config(config: ml_collections.ConfigDict) -> Task:
    """The task `config.model` names."""
    task = TASKS.get(config.get("model"))
    if task is None:
        raise TrainingError(f"config.model is {config.get('model')!r}; use {' or '.join(map(repr, TASKS))}")
    return task


def for_model_config(cfg) -> Task:
    return _BY_CONFIG[type(cfg)]


def for_model(model) -> Task:
    return _BY_MODULE[type(model)]


# ------------------------------------------------------------------------------- the model and how it starts


def t5_config(config: ml_collections.ConfigDict, vocab_size: int, pad_id: int = 0, eos_id: int = 1):
    """The T5 config of `config.t5` (a named size and family, with its non-zero overrides)."""
    c = config.t5
    overrides = {
        k: c[k] for k in ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads") if c.get(k, 0)
    }
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


def embedder_token_embeddings(params: dict, embedder, vocab, shardings: Any) -> dict:
    """T5 token embeddings started from the embedder's own word embeddings (`config.init_token_embeddings=
    "embedder"`): same vocabulary, same width required; rescaled to the random init's unit standard deviation."""
    word = embedder.params.get("backbone", {}).get("word_embeddings") if isinstance(embedder.params, dict) else None
    shared = params["t5"]["shared"]
    if word is None or not vocab.in_graph or tuple(np.shape(word)) != tuple(shared.shape):
        raise TrainingError(
            f"init_token_embeddings=embedder needs vocab=embedder and t5.d_model equal to the embedder's width "
            f"({np.shape(word)[-1] if word is not None else '?'}); got a T5 embedding of shape {tuple(shared.shape)}"
        )
    w = np.asarray(word, np.float32)
    w = w / w.std()
    t5 = dict(params["t5"], shared=jax.device_put(w.astype(shared.dtype), shardings["t5"]["shared"]))
    return dict(params, t5=t5)


def embedder_layers(params: dict, config: ml_collections.ConfigDict, embedder, vocab, shardings: Any) -> dict:
    """T5 ("bert" layout) whose encoder and decoder layers, token and position embeddings start as the BERT
    embedder's own (`config.init_layers="embedder"`; BERT2BERT, Rothe et al. 2020): `t5.bert_layers_to_t5`."""
    backbone = getattr(getattr(embedder, "config", None), "backbone", None)
    if not isinstance(backbone, embedders.BertConfig) or not vocab.in_graph:
        raise TrainingError(
            "init_layers=embedder needs a BERT-backbone embedder (all-MiniLM-L6-v2, say) and vocab=embedder; "
            f"got a {type(backbone).__name__} backbone"
        )
    cfg = t5_config(config, vocab.size, vocab.pad_id, vocab.eos_id)
    try:
        host = jax.tree_util.tree_map(np.asarray, params["t5"])
        t5 = t5_lib.bert_layers_to_t5(jax.tree_util.tree_map(np.asarray, embedder.params["backbone"]), cfg, host)
    except ValueError as e:
        raise TrainingError(
            f"init_layers=embedder: {e} (use --config configs/inverter.py:gpu_warm's t5 shape)"
        ) from None
    t5 = jax.tree_util.tree_map(
        lambda x, old, s: jax.device_put(x.astype(old.dtype), s), t5, params["t5"], shardings["t5"]
    )
    return dict(params, t5=t5)


# ------------------------------------------------------------------------------- the corrector's inverter


def inverter_bundle(config: ml_collections.ConfigDict) -> Path:
    """The corrector config's `inverter`: a model bundle whose inverter made (or will make) the hypotheses."""
    from v2t_jax import bundle as bundle_lib

    if not config.inverter:
        raise TrainingError("a corrector needs the inverter that makes its hypotheses: --config.inverter=BUNDLE")
    bundle = Path(config.inverter).expanduser()
    if (bundle / "config.json").exists() and (bundle / "checkpoints").is_dir():
        raise TrainingError(
            f"{bundle} is a training run; export a bundle first: v2t export --workdir {bundle} --output BUNDLE"
        )
    try:
        meta = bundle_lib.read_meta(bundle)
    except bundle_lib.ModelError as e:
        raise TrainingError(f"inverter: {e}") from None
    if meta.vocabulary is not None:
        raise TrainingError(f"inverter {bundle} decodes in its own vocabulary; a corrector reads the embedder's")
    if meta.embedder != config.embedder or meta.max_length != config.max_length:
        raise TrainingError(
            f"inverter {bundle} inverts {meta.embedder} at {meta.max_length} tokens, "
            f"the config {config.embedder} at {config.max_length}"
        )
    return bundle


def from_bundle(params: dict, bundle: Path, kind: str, shardings: Any) -> dict:
    """The `kind` ("inverter" or "corrector") parameters of model bundle `bundle`, in place of `params` (same
    structure and shapes required), on `shardings`."""
    from v2t_jax import bundle as bundle_lib

    try:
        _, inverter, corrector = bundle_lib.read(bundle)
    except bundle_lib.ModelError as e:
        raise TrainingError(f"init_from: {e}") from None
    new = inverter if kind == "inverter" else corrector
    if new is None:
        raise TrainingError(f"init_from: {bundle} has no {kind}")
    _check_same_shapes(new, params, f"init_from: the {kind} in {bundle} has another shape than this config")
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), new, shardings)


def _check_same_shapes(new: dict, params: dict, what: str, hint: str = "") -> None:
    same = jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params) and all(
        np.shape(a) == np.shape(b) for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params))
    )
    if not same:
        raise TrainingError(f"{what} (T5 size, vocabulary or embedding width){hint}")


def warm_start(params: dict, bundle: Path, shardings: Any) -> dict:
    """Corrector parameters whose T5 and two embedding projections start as the inverter's.

    The inverter already maps an embedding to text; the corrector starts from that instead of from noise:
    its T5 takes the inverter's T5, its projections of e and ê take the inverter's projection of e, and the
    projection of e - ê and the input layer norm keep their fresh initialisation. The reference starts both
    models from the same pretrained T5; with none here, the trained inverter is the closest thing."""
    from v2t_jax import bundle as bundle_lib

    try:
        inv = bundle_lib.read(bundle)[1]
    except bundle_lib.ModelError as e:
        raise TrainingError(f"inverter: {e}") from None
    new = dict(params, t5=inv["t5"], transform_target=inv["transform"], transform_hypothesis=inv["transform"])
    what = f"init_from_inverter: the inverter in {bundle} has another shape than this corrector config"
    _check_same_shapes(new, params, what, "; set --config.init_from_inverter=false")
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), new, shardings)
