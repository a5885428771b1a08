"""Build a tiny random Llama checkpoint with its own tokenizer, fully offline.

Real vLLM needs a real checkpoint to start, and CI machines have no internet and no GPU. This
builds one in about a second from nothing: a byte-level BPE tokenizer trained on an inline corpus,
a chat template, and a 2-layer Llama with random weights (under 1 MB). vLLM's CPU backend serves
it, so the whole serving path (start, chat, streaming, /metrics, drain) runs for real in CI.

The file is standalone on purpose: ``gonka-serve tiny-model`` runs it as a script with the
interpreter of the environment that has vLLM (torch, transformers, tokenizers), which need not be
the environment gonka_mux runs in. It imports nothing from gonka_mux.

Constraints that shaped the numbers: vLLM's CPU attention kernels accept only some head sizes
(head_dim=16 crashes the engine at the first request; 64 works), and the vocabulary must cover the
chat template's markers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["KIMI_SPECIAL_TOKENS", "build_tiny_model"]

# The Kimi K2 reasoning and tool-call markers: with them in the vocabulary the model starts under
# ``--tool-call-parser kimi_k2 --reasoning-parser kimi_k2``, so those flags are exercised too.
KIMI_SPECIAL_TOKENS = [
    "<think>",
    "</think>",
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
]

_CORPUS = [
    "hello world this is a tiny test model for vllm serving",
    "the quick brown fox jumps over the lazy dog",
    "user assistant system tool function call weather city",
    "0 1 2 3 4 5 6 7 8 9 { } [ ] : , \" ' . ? !",
]

_PLAIN_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
# Emits <think> unless the request passes chat_template_kwargs {"thinking": false}, as Kimi K2.5's
# own template does.
_KIMI_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: "
    "{% if thinking is defined and not thinking %}<think></think>{% else %}<think>{% endif %}"
    "{% endif %}"
)


def build_tiny_model(
    out_dir: str | os.PathLike[str], *, kimi_tokens: bool = False, seed: int = 0
) -> Path:
    """Write a servable tiny Llama checkpoint and tokenizer to ``out_dir`` and return its path.

    Needs ``torch``, ``transformers`` and ``tokenizers`` (all present wherever vLLM is installed).
    """
    # optional: torch, tokenizers and transformers (in no extra); the script runs in vLLM's env
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 50, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    hf_tok.chat_template = _PLAIN_TEMPLATE
    if kimi_tokens:
        hf_tok.add_special_tokens({"additional_special_tokens": list(KIMI_SPECIAL_TOKENS)})
        hf_tok.chat_template = _KIMI_TEMPLATE
    hf_tok.save_pretrained(str(out))

    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # a head size vLLM's CPU attention kernels support
        max_position_embeddings=2048,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "gonka-tiny-model.json").write_text(
        json.dumps(
            {"builder": "gonka_mux.serving.tiny_model", "kimi_tokens": kimi_tokens, "seed": seed}
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to write the checkpoint to")
    parser.add_argument(
        "--kimi-tokens", action="store_true", help="add Kimi K2 reasoning/tool markers"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, kimi_tokens=args.kimi_tokens, seed=args.seed)
    sys.stdout.write(f"tiny model written to {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
