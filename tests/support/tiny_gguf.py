"""Write a tiny random-weight llama GGUF model for end-to-end tests.

The model is meant to be served by ``llama_cpp.server`` so that Slipstream can be
tested against a real OpenAI-compatible inference server without downloading
weights. Its answers are "token soup", but they have guaranteed properties:

* every generated token is a printable ASCII character, ``▁`` (a space) or a
  ``▁word`` piece, so the decoded text consists only of printable characters and
  spaces (no newlines, no control characters, no partial UTF-8 sequences);
* EOS can never be sampled, so every completion runs to ``max_tokens`` and ends
  with ``finish_reason == "length"``.

Architecture (``general.architecture = "llama"``, all tensors F32)::

    n_vocab      = 439                llama.vocab_size (see _build_vocab)
    n_embd       = 64                 llama.embedding_length
    n_layer      = 2                  llama.block_count
    n_head       = 4                  llama.attention.head_count
    n_head_kv    = 4                  llama.attention.head_count_kv
    head_dim     = 16                 llama.rope.dimension_count
    n_ff         = 128                llama.feed_forward_length
    n_ctx_train  = 512                llama.context_length
    rms_eps      = 1e-5               llama.attention.layer_norm_rms_epsilon
    rope base    = 10000.0            llama.rope.freq_base

Tensors, given as *numpy* shapes ``(n_out, n_in)`` (GGUF stores the reverse,
``ne = [n_in, n_out]``, which is what llama.cpp expects)::

    token_embd.weight         (n_vocab, n_embd)
    blk.{i}.attn_norm.weight  (n_embd,)
    blk.{i}.attn_q.weight     (n_embd, n_embd)
    blk.{i}.attn_k.weight     (n_head_kv * head_dim, n_embd)
    blk.{i}.attn_v.weight     (n_head_kv * head_dim, n_embd)
    blk.{i}.attn_output.weight (n_embd, n_embd)
    blk.{i}.ffn_norm.weight   (n_embd,)
    blk.{i}.ffn_gate.weight   (n_ff, n_embd)
    blk.{i}.ffn_up.weight     (n_ff, n_embd)
    blk.{i}.ffn_down.weight   (n_embd, n_ff)
    output_norm.weight        (n_embd,)
    output.weight             (n_vocab, n_embd)

How the banned tokens are suppressed: hidden channel 0 is a constant "bias"
channel. Every token embedding has ``x[0] = 1``; the rows of ``attn_output`` and
``ffn_down`` that write channel 0 are zero, so the residual stream keeps
``x[0] = 1`` through both layers. The final RMSNorm rescales it by a positive
factor (``output_norm[0] = 1``), so ``output[t, 0] = -BAN`` contributes a large
negative logit to every banned token ``t`` (``<unk>``, ``<s>``, ``</s>`` and the
256 byte tokens), while allowed tokens get ``output[t, 0] = 0`` (or a small
positive nudge for whole ``▁word`` pieces, so answers contain some words).
Layer weights are scaled ``1/sqrt(n_in)`` so the residual stream stays O(1) and
the constant channel keeps its weight after the final RMSNorm. Measured with
seed 0 over 10,000 positions of random token sequences: banned logits <= -4,480,
allowed logits within +-12.5, so the margin is > 4,400 logits.

The chat template renders ``<|role|>content\n`` per message and ends with
``<|assistant|>``; ``<|``, ``|>`` have no special tokens and tokenize to
character pieces, which is fine for a random model.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 128
N_CTX_TRAIN = 512
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3  # <0x00> is token 3, <0xFF> is token 258

#: Weight on the constant channel for banned tokens (large negative logit).
BAN = 10000.0
#: Weight on the constant channel for whole ``▁word`` pieces (mild preference).
WORD_BONUS = 1.0
#: Standard deviation of the token embeddings (channels 1..63).
EMBD_STD = 1.0
#: Layer matrices are N(0, LAYER_GAIN**2 / n_in): keeps the residual stream O(1).
LAYER_GAIN = 1.0
#: Output head rows are N(0, (LOGIT_STD / 8)**2): allowed logits have std ~LOGIT_STD.
LOGIT_STD = 3.0

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_WORDS: tuple[str, ...] = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "we",
    "can",
    "there",
    "use",
    "each",
    "how",
    "if",
    "will",
    "up",
    "out",
    "time",
)


def _build_vocab() -> tuple[list[str], list[float], list[int], set[int]]:
    """Return ``(tokens, scores, token_types, word_ids)`` for an SPM-style vocabulary.

    Layout: ``<unk>``, ``<s>``, ``</s>``, ``<0x00>``..``<0xFF>``, ``▁`` and the 94
    printable non-space ASCII characters, then ``▁word`` pieces together with all
    their prefixes (``▁t``, ``▁th``, ``▁the``) so llama.cpp's SPM tokenizer can
    actually merge prompt text into them. ``word_ids`` are the whole-word pieces.
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256

    pieces: list[str] = ["▁"] + [chr(c) for c in range(0x21, 0x7F)]
    seen = set(pieces)
    whole_words: set[str] = set()
    for word in _WORDS:
        full = "▁" + word
        whole_words.add(full)
        for end in range(2, len(full) + 1):
            piece = full[:end]
            if piece not in seen:
                seen.add(piece)
                pieces.append(piece)
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)

    # SentencePiece scores are log-probabilities: longer pieces merge first.
    scores = [0.0] * (BYTE_OFFSET + 256) + [
        -10.0 + len(piece) - i * 1e-3 for i, piece in enumerate(pieces)
    ]
    word_ids = {i for i, tok in enumerate(tokens) if tok in whole_words}
    return tokens, scores, [int(t) for t in types], word_ids


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """Write the tiny llama model described in the module docstring to ``path``.

    Deterministic for a given ``seed`` (byte-identical output). Takes a few
    milliseconds and produces a file of about 0.57 MB (565,216 bytes). Returns ``path``.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types, word_ids = _build_vocab()
    n_vocab = len(tokens)
    n_embd_kv = N_HEAD_KV * HEAD_DIM

    def rand(n_out: int, n_in: int, std: float | None = None) -> np.ndarray:
        scale = LAYER_GAIN / np.sqrt(n_in) if std is None else std
        return (rng.standard_normal((n_out, n_in)) * scale).astype(np.float32)

    tensors: dict[str, np.ndarray] = {}

    embd = rand(n_vocab, N_EMBD, EMBD_STD)
    embd[:, 0] = 1.0  # the constant channel
    tensors["token_embd.weight"] = embd

    for i in range(N_LAYER):
        attn_out = rand(N_EMBD, N_EMBD)
        attn_out[0, :] = 0.0  # never write into the constant channel
        ffn_down = rand(N_EMBD, N_FF)
        ffn_down[0, :] = 0.0
        tensors[f"blk.{i}.attn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        tensors[f"blk.{i}.attn_q.weight"] = rand(N_EMBD, N_EMBD)
        tensors[f"blk.{i}.attn_k.weight"] = rand(n_embd_kv, N_EMBD)
        tensors[f"blk.{i}.attn_v.weight"] = rand(n_embd_kv, N_EMBD)
        tensors[f"blk.{i}.attn_output.weight"] = attn_out
        tensors[f"blk.{i}.ffn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        tensors[f"blk.{i}.ffn_gate.weight"] = rand(N_FF, N_EMBD)
        tensors[f"blk.{i}.ffn_up.weight"] = rand(N_FF, N_EMBD)
        tensors[f"blk.{i}.ffn_down.weight"] = ffn_down

    tensors["output_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
    # Allowed tokens get logits of std ~LOGIT_STD; channel 0 carries the ban / bonus.
    output = rand(n_vocab, N_EMBD, LOGIT_STD / np.sqrt(N_EMBD))
    output[:, 0] = 0.0
    output[: BYTE_OFFSET + 256, 0] = -BAN  # <unk>, <s>, </s> and every byte token
    output[sorted(word_ids), 0] = WORD_BONUS
    tensors["output.weight"] = output

    writer = gguf.GGUFWriter(path, "llama")  # also writes general.architecture
    writer.add_name("slipstream-tiny-random")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, array in tensors.items():
        writer.add_tensor(name, array)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
