"""Checkpoint loading: local folders, sharded indexes, dtype, the tokenizer, and every refusal."""

import json
import shutil

import pytest

from edgepack.architectures import ARCHITECTURES, families
from edgepack.checkpoint import resolve
from edgepack.errors import CheckpointError
from edgepack.tokenizer import DeviceTokenizer


@pytest.fixture
def llama(tiny_checkpoint, tmp_path):
    """A private copy of the tiny llama that a test may damage."""
    return shutil.copytree(tiny_checkpoint("llama"), tmp_path / "llama")


def test_every_family_is_registered():
    names = {s.name for s in families()}
    assert {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"} <= names


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text"])
def test_tiny_checkpoint_of_each_family_resolves_and_loads(tiny_checkpoint, arch):
    ckpt = resolve(tiny_checkpoint(arch))
    assert ckpt.spec is ARCHITECTURES.get(arch)
    assert ckpt.num_parameters > 50_000
    model = ckpt.load_model()
    assert sum(p.numel() for p in model.parameters()) >= ckpt.num_parameters


def test_loads_in_the_checkpoint_dtype(tiny_checkpoint, tmp_path):
    from edgepack.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint("llama", tmp_path / "bf16", dtype="bfloat16")
    ckpt = resolve(path)
    assert ckpt.dtype == "bfloat16"
    assert next(ckpt.load_model().parameters()).dtype.__repr__() == "torch.bfloat16"


def test_sharded_checkpoint_with_index(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("llama"))
    out = tmp_path / "sharded"
    model.save_pretrained(out, max_shard_size="100KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_checkpoint("llama") / f, out / f)
    assert (out / "model.safetensors.index.json").is_file()
    ckpt = resolve(out)
    assert len(ckpt.weight_files) > 1
    assert ckpt.num_parameters == resolve(tiny_checkpoint("llama")).num_parameters


def test_missing_shard_is_named(tiny_checkpoint, tmp_path):
    out = tmp_path / "sharded"
    shutil.copytree(tiny_checkpoint("llama"), out)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="missing shards listed in its index: model-00001-of-00002"):
        resolve(out)


def test_missing_config(llama):
    (llama / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        resolve(llama)


@pytest.mark.parametrize("damage", ["truncate", "garbage_header"])
def test_corrupt_safetensors(llama, damage):
    weights = llama / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        resolve(llama)


def test_pickle_only_is_refused_unless_allowed(llama):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(llama / "model.safetensors"), llama / "pytorch_model.bin")
    (llama / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="only pickled weights .*--allow-pickle"):
        resolve(llama)
    assert resolve(llama, allow_pickle=True).weight_files[0].name == "pytorch_model.bin"


def test_custom_code_is_refused_and_never_runs(llama, tmp_path):
    marker = tmp_path / "code-ran"
    (llama / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (llama / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((llama / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (llama / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="needs custom code .*--trust-remote-code"):
        resolve(llama)
    assert not marker.exists()


def test_unsupported_architecture_lists_the_supported(llama):
    cfg = json.loads((llama / "config.json").read_text())
    cfg.update(model_type="mamba", architectures=["MambaForCausalLM"])
    (llama / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"MambaForCausalLM .*not supported. Supported model types: .*llama"):
        resolve(llama)


def test_hub_id_offline_says_to_pass_a_local_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="pass its local folder"):
        resolve("someone/some-model")


def test_chat_templates_render_as_transformers_renders_them(tiny_checkpoint, tmp_path):
    """Loop controls and strftime_now, which a plain Jinja sandbox refuses, render as the model card's code does;
    a template that raises is one CheckpointError naming the folder."""
    import shutil
    import time

    from transformers import PreTrainedTokenizerFast

    folder = shutil.copytree(tiny_checkpoint("llama"), tmp_path / "tok")
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}Today: {{ strftime_now('%Y') }}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    (folder / "chat_template.jinja").write_text(template)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    text = DeviceTokenizer(folder).apply_chat_template(messages)
    assert text == PreTrainedTokenizerFast.from_pretrained(folder).apply_chat_template(messages, tokenize=False,
                                                                                       add_generation_prompt=True)
    assert "[system]" not in text and f"Today: {time.strftime('%Y')}" in text and text.endswith("[assistant] ")
    (folder / "chat_template.jinja").write_text("{{ raise_exception('no tools here') }}")
    with pytest.raises(CheckpointError, match="chat template failed to render: no tools here"):
        DeviceTokenizer(folder).apply_chat_template(messages)


def test_tokenizer_loads_as_the_device_does(tiny_checkpoint):
    tok = DeviceTokenizer(tiny_checkpoint("llama"))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text)
    assert ids[0] == 3 and tok.decode(ids).endswith("assistant\n")
    assert tok.token_id("bos") == 1 and tok.eos_ids == [2, 4]
