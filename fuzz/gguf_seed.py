"""Writes a tiny valid llama GGUF file (the GGUF fuzzer's seed): dim 8, one block, 2 heads sharing
1 KV head, hidden 8, the 259 pieces byte fallback needs; an F16 embedding, F32 elsewhere.

    python3 fuzz/gguf_seed.py OUT.gguf
"""
import struct
import sys


def string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return string(key) + struct.pack("<I", vtype) + payload


def main(path):
    pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    meta = [
        kv("general.architecture", 8, string("llama")),
        kv("llama.context_length", 4, struct.pack("<I", 16)),
        kv("llama.embedding_length", 4, struct.pack("<I", 8)),
        kv("llama.block_count", 4, struct.pack("<I", 1)),
        kv("llama.feed_forward_length", 4, struct.pack("<I", 8)),
        kv("llama.attention.head_count", 4, struct.pack("<I", 2)),
        kv("llama.attention.head_count_kv", 4, struct.pack("<I", 1)),
        kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
        kv("tokenizer.ggml.model", 8, string("llama")),
        kv("tokenizer.ggml.tokens", 9,
           struct.pack("<IQ", 8, len(pieces)) + b"".join(string(p) for p in pieces)),
        kv("tokenizer.ggml.scores", 9,
           struct.pack("<IQ", 6, len(pieces)) + struct.pack("<%df" % len(pieces), *[0.0] * len(pieces))),
    ]
    # (name, dims innermost first, type, bytes)
    tensors = [("token_embd.weight", [8, 259], 1, 2 * 8 * 259), ("output_norm.weight", [8], 0, 32)]
    for name, dims in [("attn_norm", [8]), ("ffn_norm", [8]), ("attn_q", [8, 8]), ("attn_k", [8, 4]),
                       ("attn_v", [8, 4]), ("attn_output", [8, 8]), ("ffn_gate", [8, 8]),
                       ("ffn_up", [8, 8]), ("ffn_down", [8, 8])]:
        n = 1
        for d in dims:
            n *= d
        tensors.append(("blk.0.%s.weight" % name, dims, 0, 4 * n))
    infos, data = b"", b""
    for name, dims, ttype, size in tensors:
        infos += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ttype, len(data))
        payload = bytes((i * 7) % 61 for i in range(size)) if ttype == 1 else \
            struct.pack("<%df" % (size // 4), *[0.01 * (i % 13) for i in range(size // 4)])
        data += payload + b"\0" * (-len(payload) % 32)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta) + infos
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as out:
        out.write(head + data)


if __name__ == "__main__":
    main(sys.argv[1])
