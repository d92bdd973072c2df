"""Golden checkpoints and inversions from the reference vec2text 0.0.13 (PyTorch) in the published models' layout,
for tests/test_pretrained.py (`v2t import vec2text`).

Run in the reference's own venv (`bash experiments/vec2text_venv.sh`; pins in make_vec2text_golden.py):

    ~/.cache/v2t_jax/vec2text-venv/bin/python tests/golden/make_vec2text_gtr_golden.py tests/golden/vec2text_gtr

As vec2text's `gtr-base` models, but small and random: an InversionModel and a CorrectorEncoderModel around T5
backbones that decode in a T5-style vocabulary of their own (here a 40-word word-level tokenizer, `</s>` appended,
`<pad>` 0, `</s>` 1), inverting a GTR-shaped embedder (`embedder_model_name="gtr_base"`: a T5 encoder whose mean
pool is the embedding, no Dense, no normalisation). Written by vec2text's own `save_pretrained` (config.json +
weights). The LM heads are untied and the end-of-sequence row of each is scaled so that random decoders stop
after a few tokens (generation lengths differ between vec2text's steps, 128 tokens, and ours).

Outputs (`outputs.json`), each vector inverted alone: `api.invert_embeddings` with num_steps None (the inverter),
1 and 2 greedy correction steps (vec2text returns the last step's text), and 1 step of sequence beam 2 (the best
of the step's candidates by cosine); and `greedy1_forward`, the first greedy correction decoded by the corrector's
own forward pass. vec2text's `generate` departs from its forward pass on some inputs (here 2 of the 4: its first
token is not the argmax of its own logits; also tests/test_vec2text_import.py), so corrections are compared
on the forward pass, the model function both sides compute.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import tokenizers
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from vec2text_reference import inversion_config_fields, rebuild_corrector_projections  # noqa: E402 (same venv)

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "in", "mat", "house", "red", "blue", "big", "small", "and",
         "old", "new", "man", "woman", "child", "tree", "river", "city", "road", "book", "read", "wrote", "saw",
         "green", "light", "dark", "night", "day", "sun", "moon", "star", "sea", "ship", "sail", "home"]  # fmt: skip
TEXTS = ["the cat sat on the mat", "a big red ship", "the old man read a book", "night and day",
         "the river ran in the city", "a small green tree", "the sun and the moon", "a woman wrote a book",
         "the dog ran home", "dark night on the sea", "the child saw a star", "new road in the old city",
         "a blue ship sail", "the man and the child", "green light in the house", "the small dog sat"]  # fmt: skip
KEEP = 4  # the first texts whose every output ends within 12 words (and is not empty): both sides stop on EOS


def tokenizer(folder: Path) -> transformers.PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##", cleanup=False)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")  # fmt: skip
    fast.save_pretrained(folder)
    return fast


def backbone(folder: Path, seed: int, vocab: int, eos_scale: float) -> None:
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
    model = transformers.T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        model.lm_head.weight[1] *= eos_scale
    model.save_pretrained(folder)


def main(out: Path) -> None:
    import evaluate

    evaluate.load = lambda *a, **k: None  # offline: metrics are not on the inference path
    import vec2text
    import vec2text.models.inversion as inversion_mod
    from vec2text.models import CorrectorEncoderModel, InversionModel
    from vec2text.models.config import InversionConfig

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tmp = out / "_t5"
    tok = tokenizer(out / "tokenizer")
    torch.manual_seed(7)
    shape = dict(d_model=24, d_kv=6, d_ff=48, num_layers=1, num_heads=4, dropout_rate=0.0)
    gtr = transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(tok), **shape)).eval()
    gtr.save_pretrained(out / "gtr")
    tok.save_pretrained(out / "gtr")
    inversion_mod.load_embedder_and_tokenizer = lambda name, torch_dtype, **kw: (gtr, tok)  # offline

    eos_scale = 5.0
    backbone(tmp / "inversion", 1, len(tok), eos_scale)
    backbone(tmp / "corrector", 2, len(tok), eos_scale)
    tok.save_pretrained(tmp / "inversion")
    tok.save_pretrained(tmp / "corrector")
    common = inversion_config_fields("gtr_base", 16, 4)
    torch.manual_seed(3)
    inverter = InversionModel(InversionConfig(model_name_or_path=str(tmp / "inversion"), **common)).eval()
    torch.manual_seed(4)
    config = InversionConfig(model_name_or_path=str(tmp / "corrector"), corrector_ignore_hypothesis_embedding=False,
                             **common)  # fmt: skip
    corrector = CorrectorEncoderModel(config)
    rebuild_corrector_projections(corrector, 24, 4)  # 0.0.13 hard-codes embedder_dim = 768
    corrector = corrector.eval()
    inverter.save_pretrained(out / "inversion", safe_serialization=True)
    corrector.save_pretrained(out / "corrector", safe_serialization=True)
    shutil.rmtree(tmp)

    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = gtr(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        m = enc.attention_mask[..., None].float()
        e = (h * m).sum(1) / m.sum(1)  # vec2text's gtr_base: the encoder's mean pool
    trainer = vec2text.api.load_corrector(inverter, corrector)
    runs = {"step0": (None, 0), "greedy1": (1, 0), "greedy2": (2, 0), "sbeam2_1": (1, 2)}
    outputs = {name: [] for name in runs}

    def forward_greedy(row) -> str:
        """One greedy correction of the step-0 hypothesis decoded by the corrector's own forward pass (argmax
        of teacher-forced logits, token by token): vec2text's `generate` departs from its forward pass on some
        inputs (see tests/test_vec2text_import.py); this is the model function both sides compute."""
        fe, hid, hm, hemb = trainer._get_hypothesis_uncached({"frozen_embeddings": row[None]})
        out: list[int] = []
        while len(out) < 32 and (not out or out[-1] != 1):
            lg = corrector(embedding=fe, hypothesis_embedding=hemb, hypothesis_input_ids=hid,
                           hypothesis_attention_mask=hm, labels=torch.tensor([out + [0]])).logits  # fmt: skip
            out.append(int(lg[0, -1].argmax()))
        return tok.decode(out, skip_special_tokens=True)

    runs_forward = {"greedy1_forward": forward_greedy}
    outputs.update({name: [] for name in runs_forward})
    kept = []
    with torch.no_grad():
        for i, row in enumerate(e):
            got = {name: vec2text.api.invert_embeddings(row[None], trainer, num_steps=steps,
                                                        sequence_beam_width=beam)[0]
                   for name, (steps, beam) in runs.items()}  # fmt: skip
            got.update({name: fn(row) for name, fn in runs_forward.items()})
            if all(1 <= len(t.split()) <= 12 for t in got.values()) and len(kept) < KEEP:
                kept.append(i)
                for name, text in got.items():
                    outputs[name].append(text)
    assert len(kept) == KEEP, kept
    np.save(out / "embeddings.npy", e.numpy()[kept])
    meta = {"vec2text": "0.0.13", "transformers": transformers.__version__, "torch": torch.__version__,
            "texts": [TEXTS[i] for i in kept], "outputs": outputs}  # fmt: skip
    (out / "outputs.json").write_text(json.dumps(meta, indent=1) + "\n")
    for name, texts in outputs.items():
        print(name, texts)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
