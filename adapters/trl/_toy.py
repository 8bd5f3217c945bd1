"""A tiny character-level causal LM saved to a folder: offline tests and toy examples.

Nothing is downloaded: the tokenizer is built with the ``tokenizers`` library (one token per
character) and the model is a freshly initialised ``LlamaForCausalLM``. Passing the *folder* to
``HAEPOTrainer``/``GRPOTrainer`` (not the in-memory model) lets TRL reload it for its reference
model.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["save_char_level_model"]

_SPECIALS = ("<pad>", "<eos>", "<bos>")


def save_char_level_model(
    folder: str | os.PathLike[str],
    alphabet: str,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_length: int = 64,
    initializer_range: float = 0.02,
    seed: int = 0,
) -> Path:
    """Save a random tiny Llama and a character-level tokenizer over ``alphabet`` to ``folder``.

    Token ids: ``0 = <pad>``, ``1 = <eos>``, ``2 = <bos>``, then one id per character of
    ``alphabet`` in order. The tokenizer pads on the left (what TRL's generation expects).

    Args:
      folder: where to save (created if missing).
      alphabet: the distinct characters the model can read and write.
      hidden_size, num_layers, num_heads, max_length: the model's size.
      initializer_range: std of the random weights (larger = peakier next-token distributions).
      seed: torch seed for the weights.

    Returns:
      The folder, as a ``Path``.

    Example:
      >>> import tempfile
      >>> from transformers import AutoTokenizer
      >>> from haepo_adapters.trl import save_char_level_model
      >>> path = save_char_level_model(tempfile.mkdtemp(), "ab>")
      >>> AutoTokenizer.from_pretrained(path)("ab>")["input_ids"]
      [3, 4, 5]
    """
    if not isinstance(alphabet, str) or not alphabet:
        raise ValueError(f"alphabet: expected a non-empty str, got {alphabet!r}")
    if len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet: expected distinct characters, got {alphabet!r}")
    if any(ch.isspace() for ch in alphabet):
        raise ValueError(f"alphabet: expected no whitespace characters, got {alphabet!r}")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*_SPECIALS, *alphabet])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # decode without spaces between characters
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        padding_side="left",
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_length,
        initializer_range=initializer_range,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
