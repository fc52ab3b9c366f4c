"""Each domain's module starts from its own weights, so a composition spans one subspace per domain.

The references are computed here from the files on disk (safetensors, numpy-style linear algebra),
not from domix's own composer: the cosine of two domains' initial A, the numerical rank of A_cat.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from domix.finetuning.config import FinetuneConfig
from domix.finetuning.run import finetune
from domix.pretraining.config import PretrainConfig
from domix.engine.loop import domain_seed
from domix.pretraining.run import pretrain

from conftest import make_tiny_model


def lora_A(folder) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / "adapter_model.safetensors"))
    return {k.removesuffix(".lora_A.weight"): v.double() for k, v in weights.items() if k.endswith(".lora_A.weight")}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))


def store(model, corpora, out, **kw):
    settings = dict(steps=4, batch_size=8, seq_len=32, lr=5e-3, lora_rank=4, heldout_fraction=0.1, checkpoint_every=100)
    settings.update(kw)
    pretrain(PretrainConfig(model=str(model), domains={k: str(v) for k, v in corpora.items()}, out=str(out), **settings))
    return out


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """A tiny Llama whose layers read 64 or more features, where independent draws are near-orthogonal."""
    return make_tiny_model(tmp_path_factory.mktemp("wide") / "llama", "llama", seed=0, hidden_size=64, intermediate_size=128)


@pytest.mark.parametrize("fused", [True, False])
def test_two_domains_modules_are_near_orthogonal_and_their_concatenation_has_full_rank(wide_llama, corpora, tmp_path, fused):
    out = store(wide_llama, corpora, tmp_path / "store", fused=fused)
    food, bio = lora_A(out / "food"), lora_A(out / "bio")
    assert food.keys() == bio.keys() and len(food) == 14  # q, k, v, o, gate, up, down in 2 layers
    cosines = [abs(cosine(food[layer], bio[layer])) for layer in food]
    assert max(cosines) < 0.2, cosines  # seeded alike (the old behaviour) they were 0.99
    for layer in food:
        A_cat = torch.cat([food[layer], bio[layer]])
        assert torch.linalg.matrix_rank(A_cat).item() == 8, layer  # Σr, not r


def test_a_domain_starts_the_same_alone_fused_or_in_another_order(tiny_llama, corpora, tmp_path):
    together = store(tiny_llama, corpora, tmp_path / "together", steps=1, lr=1e-12)
    alone = store(tiny_llama, {"bio": corpora["bio"]}, tmp_path / "alone", steps=1, lr=1e-12, fused=False)
    reordered = store(tiny_llama, {"bio": corpora["bio"], "food": corpora["food"]}, tmp_path / "reordered", steps=1, lr=1e-12)
    for other in (alone, reordered):
        for layer, A in lora_A(together / "bio").items():
            torch.testing.assert_close(lora_A(other / "bio")[layer], A, rtol=0, atol=1e-9)
    manifest = __import__("json").loads((together / "bio" / "domix_manifest.json").read_text())
    assert manifest["training"]["init_seed"] == domain_seed(42, "bio") != domain_seed(42, "food")


def test_mixda_domains_start_from_their_own_adapters(tiny_llama, corpora, tmp_path):
    from conftest import make_corpus

    general = make_corpus(tmp_path / "general.txt", 80, seed=3)
    out = tmp_path / "mixda"
    pretrain(PretrainConfig(model=str(tiny_llama), domains={k: str(v) for k, v in corpora.items()}, out=str(out), method="mixda",
                            general=str(general), steps=1, lr=1e-12, batch_size=8, seq_len=32, heldout_max_blocks=2))
    food, bio = (load_file(str(out / d / "mixda_adapter.safetensors")) for d in ("food", "bio"))
    downs = [k for k in food if k.endswith("down.weight")]
    assert downs
    for key in downs:  # 64 -> 4 bottleneck: 256 numbers, independent draws give |cos| ~ 0.06
        assert abs(cosine(food[key].double(), bio[key].double())) < 0.25, key


def test_composing_modules_that_share_their_initialisation_warns_once(tiny_llama, corpora, task, tmp_path, capsys):
    out = store(tiny_llama, {"food": corpora["food"]}, tmp_path / "store")
    shutil.copytree(out / "food", out / "copy")  # a second domain with the same initial (and trained) A: an old store
    cfg = dict(task=str(task), epochs=1, batch_size=16, lr=1e-3, max_length=32, save_model=False)
    finetune(FinetuneConfig(modules=str(out), out=str(tmp_path / "old"), **cfg))
    lines = [l for l in capsys.readouterr().out.splitlines() if "warning" in l]
    assert len(lines) == 1 and "'copy' and 'food' started from the same weights" in lines[0] and "retrain" in lines[0]
    fresh = store(tiny_llama, corpora, tmp_path / "fresh")
    finetune(FinetuneConfig(modules=str(fresh), out=str(tmp_path / "new"), **cfg))
    assert "warning" not in capsys.readouterr().out
