"""Golden files from the reference vec2text 0.0.13 (PyTorch), for tests/test_vec2text_import.py.

Run in a venv of its own (vec2text 0.0.13 needs transformers < 4.50; our package uses 5.x):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0
    /tmp/refvenv/bin/pip install "transformers==4.49.0" "tokenizers==0.21.4" "huggingface_hub==0.36.2" \\
        "sentence-transformers==3.4.1" "accelerate==1.4.0" "datasets==3.3.2" "evaluate==0.4.3" \\
        "openai==1.109.1" "tenacity==9.2.1" "nltk==3.10.4" safetensors numpy scipy pandas tqdm
    /tmp/refvenv/bin/pip install --no-deps vec2text==0.0.13
    /tmp/refvenv/bin/python tests/golden/make_vec2text_golden.py tests/golden/vec2text

It builds the reference InversionModel and CorrectorEncoderModel around small random T5 backbones
(gated-GELU, untied head; a 60-token word-level vocabulary with <pad>=0, </s>=1) and a small random
BERT embedder (hidden 24), then saves their state dicts without the embedder (safetensors), the inputs,
the logits and greedy generations.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from vec2text_reference import inversion_config_fields, rebuild_corrector_projections  # noqa: E402 (same venv)


def small_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerFast:
    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(57)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return fast


def small_t5(folder: Path, seed: int, vocab: int) -> None:
    torch.manual_seed(seed)
    cfg = transformers.T5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.1,
    )
    transformers.T5ForConditionalGeneration(cfg).save_pretrained(folder)


def main(out: Path) -> None:
    import vec2text.models.inversion as inversion_mod
    from vec2text.models import CorrectorEncoderModel, InversionModel
    from vec2text.models.config import InversionConfig

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    tok = small_tokenizer(tmp / "t5")
    small_t5(tmp / "t5", 0, len(tok))
    torch.manual_seed(1)
    embedder = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=len(tok), hidden_size=24, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48
        )
    )
    inversion_mod.load_embedder_and_tokenizer = lambda name, torch_dtype, **kw: (embedder, tok)  # offline

    config = InversionConfig(model_name_or_path=str(tmp / "t5"), **inversion_config_fields("offline-bert", 8, 4))
    torch.manual_seed(2)
    inverter = InversionModel(config).eval()
    small_t5(tmp / "t5c", 3, len(tok))
    config_c = InversionConfig(
        **{**config.to_dict(), "model_name_or_path": str(tmp / "t5c"), "corrector_ignore_hypothesis_embedding": False}
    )
    torch.manual_seed(4)
    corrector = CorrectorEncoderModel(config_c)
    rebuild_corrector_projections(corrector, 24, 4)  # 0.0.13 hard-codes embedder_dim = 768; ours is 24
    corrector = corrector.eval()

    g = torch.Generator().manual_seed(5)
    e = torch.randn(3, 24, generator=g)
    e_hat = torch.randn(3, 24, generator=g)
    hyp = torch.randint(3, len(tok), (3, 6), generator=g)
    hyp_mask = torch.ones_like(hyp)
    hyp_mask[1, 4:] = 0
    hyp = hyp * hyp_mask
    labels = torch.randint(3, len(tok), (3, 5), generator=g)
    gen_kwargs = {"max_length": 8, "num_beams": 1, "do_sample": False, "min_length": 1, "early_stopping": False}
    with torch.no_grad():
        inv_logits = inverter(
            embedder_input_ids=None, embedder_attention_mask=None, frozen_embeddings=e, labels=labels
        ).logits
        cor_logits = corrector(
            embedding=e.clone(),
            hypothesis_embedding=e_hat.clone(),
            hypothesis_input_ids=hyp,
            hypothesis_attention_mask=hyp_mask,
            labels=labels,
        ).logits
        inv_gen = inverter.generate({"frozen_embeddings": e}, dict(gen_kwargs))
        cor_gen = corrector.generate(
            {
                "frozen_embeddings": e.clone(),
                "hypothesis_embedding": e_hat.clone(),
                "hypothesis_input_ids": hyp,
                "hypothesis_attention_mask": hyp_mask,
            },
            dict(gen_kwargs),
        )
        # the reference's own teacher-forced forward along its generation (see the test for why)
        cor_forced = corrector(
            embedding=e.clone(),
            hypothesis_embedding=e_hat.clone(),
            hypothesis_input_ids=hyp,
            hypothesis_attention_mask=hyp_mask,
            labels=cor_gen[:, 1:].contiguous(),
        ).logits

    def without_embedder(m):
        return {k: v.detach().clone().contiguous() for k, v in m.state_dict().items() if not k.startswith("embedder.")}

    save_file(without_embedder(inverter), str(out / "inverter.safetensors"))
    save_file(without_embedder(corrector), str(out / "corrector.safetensors"))
    np.savez(
        out / "io.npz",
        e=e.numpy(),
        e_hat=e_hat.numpy(),
        hyp=hyp.numpy(),
        hyp_mask=hyp_mask.numpy(),
        labels=labels.numpy(),
        inverter_logits=inv_logits.numpy(),
        corrector_logits=cor_logits.numpy(),
        inverter_greedy=inv_gen.numpy(),
        corrector_greedy=cor_gen.numpy(),
        corrector_forced_logits=cor_forced.numpy(),
    )
    (out / "meta.json").write_text(
        json.dumps(
            {
                "vec2text": "0.0.13",
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "max_length": 8,
            },
            indent=1,
        )
        + "\n"
    )
    print("wrote", sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
