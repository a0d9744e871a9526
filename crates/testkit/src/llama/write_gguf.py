"""Writes a tiny random llama-architecture GGUF that llama.cpp can serve.

Usage: write_gguf.py OUT.gguf VOCAB.json MERGES.txt N_CTX

Two layers, n_embd 64, float32 weights from a fixed seed, the GPT-2 byte-level BPE
vocabulary and merges given (pre-tokenizer `gpt-2`), `<|endoftext|>` as BOS/EOS, and a
ChatML-like chat template. The rows of the output matrix for end-of-text and for tokens
that are not whole UTF-8 text on their own are zero while the others are large, so the
model practically never ends an answer on its own (answers run to `max_tokens`: "length")
and never leaves a character unfinished (which would make the server generate past
`max_tokens`).
"""

import json
import sys

import gguf
import numpy as np

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
EOT = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_of_char():
    """GPT-2's byte-level alphabet: the character that stands for each byte, inverted."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def is_whole_text(token, alphabet):
    try:
        bytes(alphabet[c] for c in token).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return False
    return True


def main(out, vocab_path, merges_path, n_ctx):
    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise SystemExit("vocab ids are not 0..n-1")
    eot = vocab[EOT]
    with open(merges_path, encoding="utf-8") as f:
        merges = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    types = [gguf.TokenType.CONTROL if t == EOT else gguf.TokenType.NORMAL for t in tokens]

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name("prompting-tiny-llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(17)

    def weights(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    n_vocab = len(tokens)
    output = weights(n_vocab, N_EMBD, scale=1.0)
    output[eot] = 0.0
    alphabet = byte_of_char()
    for i, token in enumerate(tokens):
        if not is_whole_text(token, alphabet):
            output[i] = 0.0
    writer.add_tensor("token_embd.weight", weights(n_vocab, N_EMBD, scale=1.0))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(N_EMBD, N_FF))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
