"""The reference side of experiments/compare_vec2text.py: vec2text 0.0.13 (PyTorch), run as a server.

Runs in the venv that experiments/vec2text_venv.sh builds (vec2text 0.0.13 needs transformers < 4.50), never in
this package's. It

1. builds the reference `InversionModel` and `CorrectorEncoderModel` around random T5 backbones of one shape
   (seeded), decoding in the embedder's WordPiece vocabulary (pad 0 = decoder start, EOS = [SEP]) with the
   local sentence-transformers embedder, and writes their weights as vec2text checkpoint folders
   (`config.json` + `model.safetensors`) that the project's importer loads (`--out`); or loads a bundle that
   `v2t_jax.weights.vec2text_export` wrote, e.g. the shipped model (`--load`, see `load`);
2. then answers one JSON request per stdin line with one JSON line on stdout:
   {"embeddings": "x.npy", "steps": s, "beam": k} -> {"seconds", "peak_rss_mib", "texts", "mean_tokens"}.

The inversion is vec2text's own `api.invert_embeddings` path (Corrector.generate / InversionTrainer.generate)
with two changes for equal work, both written here rather than edited in the package: generation stops at the
hypothesis length (`max_seq_length`, 32) instead of the hard-coded 128, and `num_steps=0` means the inverter
alone (vec2text reads 0 as "the default number of steps"). Offline work-arounds: `evaluate.load` is stubbed
(metrics are not on the inference path), the embedder is the local folder, and the corrector's three
projections are rebuilt at the embedder's width (0.0.13 hard-codes 768).
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def peak_rss_reset() -> None:
    """Resets this process's peak resident set (VmHWM) so the next reading is the peak of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inversion_config_fields(embedder_name: str, length: int, repeat: int) -> dict:
    """The InversionConfig fields (besides model_name_or_path) of an offline run on precomputed embeddings."""
    return dict(
        embedder_model_name=embedder_name,
        embedder_model_api=None,
        embedder_fake_with_zeros=False,
        use_frozen_embeddings_as_input=True,
        encoder_dropout_disabled=False,
        decoder_dropout_disabled=False,
        embeddings_from_layer_n=None,
        use_lora=False,
        embedder_torch_dtype="float32",
        max_seq_length=length,
        num_repeat_tokens=repeat,
        embedder_no_grad=True,
    )


def rebuild_corrector_projections(corrector, dim: int, repeat: int) -> None:
    """vec2text 0.0.13's CorrectorEncoderModel hard-codes embedder_dim = 768: its three embedding projections are
    rebuilt (newly initialised from torch's RNG) at the embedder's real width."""
    d_model = corrector.encoder_hidden_dim
    for name in ("embedding_transform_1", "embedding_transform_2", "embedding_transform_3"):
        first = torch.nn.Linear(dim, dim)  # created in this order: torch's RNG draws the weights
        last = torch.nn.Linear(dim, d_model * repeat)
        setattr(corrector, name, torch.nn.Sequential(first, torch.nn.Dropout(0.0), torch.nn.GELU(), last))
    corrector.embedder_dim = dim


def build(embedder_folder: str, out: Path, seed: int, shape: dict, length: int, repeat: int):
    import evaluate
    import sentence_transformers
    import transformers

    evaluate.load = lambda *a, **k: None  # offline: metrics are not used for inference
    import vec2text
    import vec2text.models.inversion as inversion_mod
    from vec2text.models import CorrectorEncoderModel, InversionModel
    from vec2text.models.config import InversionConfig

    embedder = sentence_transformers.SentenceTransformer(embedder_folder, device="cpu")
    tok = embedder.tokenizer
    inversion_mod.load_embedder_and_tokenizer = lambda name, torch_dtype, **kw: (embedder, tok)
    dim = embedder.get_sentence_embedding_dimension()
    sep, pad = tok.sep_token_id, tok.pad_token_id

    def t5_folder(name: str, s: int) -> str:
        torch.manual_seed(s)
        folder = out / name
        cfg = transformers.T5Config(
            vocab_size=len(tok),
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,  # a random tied head emits only the start token (VEC2TEXT_OFFLINE.md)
            decoder_start_token_id=pad,
            pad_token_id=pad,
            eos_token_id=sep,
            dropout_rate=0.0,
            **shape,
        )
        transformers.T5ForConditionalGeneration(cfg).save_pretrained(folder / "t5")
        tok.save_pretrained(folder / "t5")
        return str(folder / "t5")

    common = inversion_config_fields("local-sentence-transformer", length, repeat)
    torch.manual_seed(seed)
    inverter = InversionModel(InversionConfig(model_name_or_path=t5_folder("inverter", seed + 1), **common)).eval()
    torch.manual_seed(seed + 2)
    corrector = CorrectorEncoderModel(
        InversionConfig(
            model_name_or_path=t5_folder("corrector", seed + 3), corrector_ignore_hypothesis_embedding=False, **common
        )
    )
    rebuild_corrector_projections(corrector, dim, repeat)
    corrector = corrector.eval()

    from safetensors.torch import save_file

    for name, model in (("inverter", inverter), ("corrector", corrector)):
        sd = {
            k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("embedder.")
        }
        save_file(sd, str(out / name / "model.safetensors"))
        (out / name / "config.json").write_text(json.dumps(model.config.to_dict(), indent=1, default=str) + "\n")
    return vec2text.api.load_corrector(inverter, corrector)


def load(embedder_folder: str, exported: Path, length: int):
    """vec2text's InversionModel and CorrectorEncoderModel with the weights of a bundle written by
    `v2t_jax.weights.vec2text_export.from_bundle` (EXPORTED/inversion, EXPORTED/corrector), as `build` makes them but
    loaded rather than random. A corrector trained without the start token leading its hypotheses (the
    exported config's `v2t_hypothesis_start_token: false`) gets its hypotheses without it, as it was trained:
    vec2text's generate leads every hypothesis with it, so `get_encoder_embedding` drops that first column (one
    token fewer in the corrector's encoder input; nothing else changes)."""
    import evaluate
    import sentence_transformers
    from safetensors.torch import load_file

    evaluate.load = lambda *a, **k: None
    import vec2text
    import vec2text.models.inversion as inversion_mod
    from vec2text.models import CorrectorEncoderModel, InversionModel
    from vec2text.models.config import InversionConfig

    embedder = sentence_transformers.SentenceTransformer(embedder_folder, device="cpu")
    inversion_mod.load_embedder_and_tokenizer = lambda name, torch_dtype, **kw: (embedder, embedder.tokenizer)
    dim = embedder.get_sentence_embedding_dimension()
    models = {}
    for name, cls in (("inversion", InversionModel), ("corrector", CorrectorEncoderModel)):
        meta = json.loads((exported / name / "config.json").read_text())
        fields = inversion_config_fields("local-sentence-transformer", length, meta["num_repeat_tokens"])
        config = InversionConfig(
            model_name_or_path=meta["model_name_or_path"],
            corrector_ignore_hypothesis_embedding=meta.get("corrector_ignore_hypothesis_embedding", False),
            **fields,
        )
        model = cls(config)
        if name == "corrector":
            rebuild_corrector_projections(model, dim, meta["num_repeat_tokens"])
        missing, unexpected = model.load_state_dict(load_file(str(exported / name / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith("embedder.")]
        if missing or unexpected:
            raise SystemExit(f"{exported / name}: state dict does not fit: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")  # fmt: skip
        if name == "corrector" and meta.get("v2t_hypothesis_start_token", True) is False:
            plain = model.get_encoder_embedding

            def without_start(embedding, hypothesis_embedding, hypothesis_input_ids, hypothesis_attention_mask):
                return plain(embedding, hypothesis_embedding, hypothesis_input_ids[:, 1:],
                             hypothesis_attention_mask[:, 1:])  # fmt: skip

            model.get_encoder_embedding = without_start
        models[name] = model.eval()
    return vec2text.api.load_corrector(models["inversion"], models["corrector"])


def invert(corrector, embeddings: torch.Tensor, steps: int, beam: int, length: int) -> torch.Tensor:
    """vec2text.api.invert_embeddings with generation stopping at `length` and steps=0 meaning the inverter."""
    corrector.inversion_trainer.model.eval()
    corrector.model.eval()
    gen_kwargs = copy.copy(corrector.gen_kwargs)
    gen_kwargs["min_length"] = 1
    gen_kwargs["max_length"] = length
    with torch.no_grad():
        if steps == 0:
            return corrector.inversion_trainer.generate(
                inputs={"frozen_embeddings": embeddings}, generation_kwargs=gen_kwargs
            )
        sbeam = 0 if beam == 1 else beam
        corrector.return_best_hypothesis = sbeam > 0
        return corrector.generate(
            inputs={"frozen_embeddings": embeddings},
            generation_kwargs=gen_kwargs,
            num_recursive_steps=steps,
            sequence_beam_width=sbeam,
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--embedder", required=True, help="local sentence-transformers folder")
    p.add_argument("--out", default=None, help="folder for the two vec2text checkpoints (random weights)")
    p.add_argument(
        "--load", default=None, help="a bundle written by v2t_jax.weights.vec2text_export (instead of --out)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", default="{}", help="T5Config fields as JSON (d_model, d_kv, d_ff, num_layers, ...)")
    p.add_argument("--length", type=int, default=32, help="max_seq_length: embedder tokens, generation length")
    p.add_argument("--repeat", type=int, default=16, help="num_repeat_tokens")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if (a.out is None) == (a.load is None):
        raise SystemExit("give --out (random weights) or --load (an exported bundle)")
    if a.load:
        corrector = load(a.embedder, Path(a.load), a.length)
    else:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        corrector = build(a.embedder, out, a.seed, json.loads(a.shape), a.length, a.repeat)
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        e = torch.from_numpy(np.load(req["embeddings"]).astype(np.float32))
        peak_rss_reset()
        t0 = time.perf_counter()
        ids = invert(corrector, e, int(req["steps"]), int(req["beam"]), a.length)
        seconds = time.perf_counter() - t0
        texts = corrector.tokenizer.batch_decode(ids, skip_special_tokens=True)
        pad = corrector.model.encoder_decoder.config.pad_token_id
        mean_tokens = float((ids != pad).sum(1).float().mean())  # generated tokens incl. EOS (start token is pad)
        reply = {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "texts": texts, "mean_tokens": mean_tokens}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
