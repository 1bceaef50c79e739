"""For the scripts SAELens's own environment runs (.venv-saelens): a GPT-2 folder written by
transformers, loaded by TransformerLens 3 as this project's TransformerLens 4 bridge loads it
(LayerNorm folded, writing weights and unembedding centred, value biases folded)."""

import transformers


def load_gpt2(model_dir: str):
    # TransformerLens 3 reads an official model's config from the hub by name; here it is the
    # folder's own (no network: the weights and tokenizer are handed over)
    from_pretrained = transformers.AutoConfig.from_pretrained.__func__
    transformers.AutoConfig.from_pretrained = classmethod(
        lambda cls, name, *a, **k: from_pretrained(cls, model_dir, *a, **k))
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained(
        "gpt2", hf_model=transformers.AutoModelForCausalLM.from_pretrained(model_dir),
        tokenizer=transformers.AutoTokenizer.from_pretrained(model_dir), device="cpu",
        fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
