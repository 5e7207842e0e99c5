"""Ways to break a saved Hugging Face checkpoint on purpose, for the bad-input tests."""
import json

from safetensors.numpy import load_file, save_file


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def delete_tensor(folder, name):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    del tensors[name]
    save_file(tensors, str(path))
