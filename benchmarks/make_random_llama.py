"""A Hugging Face llama folder of TinyLlama-1.1B shape with seeded random float16 weights.

For speed and memory measurements only: the weights mean nothing. Shards are generated and
written one at a time, so making the 2.2 GB folder never holds more than one shard in memory.

    python benchmarks/make_random_llama.py [FOLDER] [--seed 0] [--force]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

DEFAULT_FOLDER = Path(tempfile.gettempdir()) / "qir-bench" / "random-llama-1.1b"

# TinyLlama-1.1B's shape (config.json of TinyLlama/TinyLlama-1.1B-Chat-v1.0)
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-5,
    # both spellings: older readers look for rope_theta, transformers 5 writes rope_parameters
    "rope_theta": 10000.0,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float16",
}
STD = 0.02
MAX_SHARD_BYTES = 512 * 2**20
MARKER = ".complete"  # written last: its presence (with matching content) means the folder is whole


def tensor_shapes(config: dict = CONFIG) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in checkpoint order (HF LlamaForCausalLM naming)."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    d = config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    shapes = [("model.embed_tokens.weight", (v, h))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return shapes


def plan_shards(shapes, max_bytes: int = MAX_SHARD_BYTES) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards, current, size = [], [], 0
    for name, shape in shapes:
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    if current:
        shards.append(current)
    return shards


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    if name.endswith("norm.weight"):
        return np.ones(shape, np.float16)
    # one stream per tensor name, so a tensor's values do not depend on how the shards are cut
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= STD
    return x.astype(np.float16)


def marker_text(seed: int) -> str:
    return json.dumps({"config": CONFIG, "seed": seed, "std": STD, "max_shard_bytes": MAX_SHARD_BYTES},
                      sort_keys=True)


def is_complete(folder: Path, seed: int = 0) -> bool:
    marker = Path(folder) / MARKER
    return marker.exists() and marker.read_text() == marker_text(seed)


def make_random_llama(folder: Path | str = DEFAULT_FOLDER, seed: int = 0, force: bool = False,
                      log=print) -> Path:
    """Write (or reuse) the random TinyLlama-shaped folder; returns its path."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    if not force and is_complete(folder, seed):
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # a half-written or different folder: start over
    folder.mkdir(parents=True)
    shards = plan_shards(tensor_shapes())
    weight_map, total = {}, 0
    start = time.perf_counter()
    for index, shard in enumerate(shards, 1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        arrays = {name: random_tensor(name, shape, seed) for name, shape in shard}
        save_file(arrays, str(folder / filename), metadata={"format": "pt"})
        total += sum(a.nbytes for a in arrays.values())
        weight_map.update({name: filename for name in arrays})
        del arrays
        log(f"  wrote {filename} ({total / 2**30:.2f} GiB so far, {time.perf_counter() - start:.0f} s)")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (folder / MARKER).write_text(marker_text(seed))
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write a random-weight llama folder of TinyLlama-1.1B shape.")
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER,
                        help=f"where to write it (default: {DEFAULT_FOLDER})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if the folder is complete")
    args = parser.parse_args(argv)
    if not args.force and is_complete(args.folder, args.seed):
        print(f"{args.folder} is complete; nothing to do")
        return 0
    print(f"writing {args.folder}")
    make_random_llama(args.folder, args.seed, args.force)
    print(f"done: {args.folder}")
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
