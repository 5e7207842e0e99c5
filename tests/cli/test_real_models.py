"""The commands on the real embedded checkpoints: compile, parse back, evaluate the compiled file."""
import json
import subprocess
import sys

import qir
from qir.text import sentences


def eval_json(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "qir.cli.eval", *map(str, args), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_compiled_smollm2_round_trips_and_evaluates_like_the_gguf(tmp_path):
    from qir.cli import compile as compile_cli
    outdir = tmp_path / "smollm2"
    assert compile_cli.main(["smollm2", "--seq-len", "64", "-o", str(outdir)]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["model.qir", "model.safetensors", "tokenizer.json"]
    text = (outdir / "model.qir").read_text()
    module = qir.parse_file(outdir / "model.qir")
    qir.verify(module)
    assert qir.print_module(module) == text

    from_gguf = eval_json("smollm2", "--context", "64", "--tokens", "256")
    from_qir = eval_json(outdir / "model.qir", "--context", "64", "--tokens", "256")
    assert from_gguf["windows"] == from_qir["windows"] == 4
    assert from_gguf["bos_per_window"] is from_qir["bos_per_window"] is False
    print(f"perplexity from GGUF {from_gguf['perplexity']:.6f}, from compiled .qir {from_qir['perplexity']:.6f}")
    assert abs(from_gguf["perplexity"] - from_qir["perplexity"]) <= 1e-6 * from_gguf["perplexity"]
    assert 5 < from_gguf["perplexity"] < 100  # a working 135M model on English prose, not a broken one


def test_minilm_embeddings_from_the_command_line():
    result = eval_json("minilm", "--sentences", "3", "--context", "64")
    assert len(result["embeddings"]) == 3 and len(result["embeddings"][0]) == 384
    assert result["sentences"] == sentences(3)
