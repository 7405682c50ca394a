"""Tiny but real Hugging Face model folders for tests: random weights, a word-level tokenizer, no hub access.

Other test folders (end-to-end, API) build their models with ``build_tiny_model`` too; keep its
signature stable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
)

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "LlamaForCausalLM", "GPT2LMHeadModel", "Gemma3ForCausalLM")

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
BOS_TOKEN = "<bos>"
UNK_TOKEN = "<unk>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN, *CHAT_TOKENS)

VOCAB_SIZE = 512
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The words the tokenizer is trained on: test datasets made of them tokenize into few tokens.
WORDS = (
    "user assistant system : ? ! . , the a an is are was and or not to of in on at it this that "
    "what who where when why how yes no hello hi thanks please good bad cat dog bird fish red blue green "
    "one two three four five six seven eight nine ten zero plus minus equals answer question sky sun moon "
    "water fire tree house car road big small fast slow hot cold day night i you we they say tell me"
).split()

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(with_chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``WORDS``, with pad, eos, bos, unk and ChatML special tokens.

    It is built the way Qwen2 and GPT-2 tokenizers are (the Qwen2 split regex, then byte level), so
    that ``AutoTokenizer`` re-creating a model family's own tokenizer class from ``tokenizer.json``
    tokenizes exactly the same way.
    """
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(WORDS[start:] + WORDS[:start]) for start in range(0, len(WORDS), 7)]
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(CHAT_TOKENS),
    )
    if with_chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _tiny_config(architecture: str, tokenizer: PreTrainedTokenizerFast):
    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    vocab_size = len(tokenizer)
    if architecture == "Qwen2ForCausalLM":
        return AutoConfig.for_model(
            "qwen2", vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **ids,
        )
    if architecture == "LlamaForCausalLM":
        return AutoConfig.for_model(
            "llama", vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **ids,
        )
    if architecture == "GPT2LMHeadModel":
        # GPT-2 keeps its default dropout (0.1), so exact-resume tests also cover the RNG state.
        return AutoConfig.for_model("gpt2", vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids)
    if architecture == "Gemma3ForCausalLM":
        return AutoConfig.for_model(
            "gemma3_text", vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
            sliding_window=16, **ids,
        )
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(SUPPORTED_ARCHITECTURES)}")


def build_tiny_model(folder: Path, architecture: str = "Qwen2ForCausalLM", with_chat_template: bool = True) -> Path:
    """Save a tiny random-weight causal LM and its tokenizer as a Hugging Face folder.

    Args:
        folder: where to write it (created if missing).
        architecture: one of ``SUPPORTED_ARCHITECTURES``.
        with_chat_template: give the tokenizer a ChatML chat template.

    Returns:
        ``folder``, which ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(with_chat_template)
    config = _tiny_config(architecture, tokenizer)
    config.architectures = [architecture]
    # Wider than the usual 0.02: with tiny embeddings the logits of a 32-wide model stay near uniform
    # unless the embeddings themselves grow, which LoRA cannot do, so LoRA runs would learn nothing.
    config.initializer_range = 0.1
    # A fixed seed so that two folders built the same way hold the same weights.
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(config)
    torch.random.set_rng_state(generator_state)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
