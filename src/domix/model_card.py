"""The model card of an exported model (its README.md), written the way PEFT and transformers write theirs:
huggingface_hub's ModelCard with a metadata block (base model, library, pipeline, tags) and a text that says what
the model is: the method, the base model and its fingerprint, the data, the run's settings and its scores."""

from __future__ import annotations

import json
from pathlib import Path

from domix import atomic

PAPERS = {  # the method's paper, where it has one (docs/methods.md says how domix implements each)
    "domix": "DoMIX (Kim, Kang and Moon, ACL 2025; arXiv:2507.02302)",
    "domix_fixed": "DoMIX's ablation with its bridge frozen at its init",
    "cat": "DoMIX's ablation with its bridge frozen at the identity",
    "mixda": "MixDA, Mixture-of-Domain-Adapters",
    "mode": "MoDE, modular domain experts",
    "lora": "LoRA (Hu et al., ICLR 2022)",
    "dora": "DoRA (Liu et al., ICML 2024)",
    "lora_fa": "LoRA-FA (A frozen, B trained)",
}


def write_model_card(folder: Path, record: dict, settings: dict | None, causal: bool) -> Path:
    """Write ``folder/README.md`` for a model exported from a domix run (``record``: its task record; ``settings``:
    its run's config, where the run folder kept it)."""
    from huggingface_hub import ModelCard, ModelCardData

    method = record["method"]
    base = record["base_model"]
    data = ModelCardData(base_model=base["name"] if not Path(base["name"]).is_absolute() else None, library_name="transformers",
                         pipeline_tag="text-generation" if causal else "text-classification", tags=["domix", method])
    scores = {k: record[k] for k in ("dev", "test") if record.get(k)}
    lines = [
        f"# {method} on {record.get('task') or 'an instruction set'}",
        "",
        f"A {'causal language model' if causal else 'sequence classifier'} made by domix "
        f"(`domix finetune`/`instruct`, then `domix export`): the run's adapters folded into the base weights, so it loads "
        f"with `{'AutoModelForCausalLM' if causal else 'AutoModelForSequenceClassification'}.from_pretrained` and needs no domix.",
        "",
        f"- Method: `{method}`" + (f", {PAPERS[method]}" if method in PAPERS else ""),
        f"- Base model: `{base['name']}`, weights fingerprint `{base.get('fingerprint')}`",
    ]
    if not causal:
        lines += [f"- Task: `{record.get('task')}`, labels {', '.join(record.get('labels') or [])}; up to {record.get('max_length')} "
                  "tokens an example"]
    if record.get("template"):
        lines += [f"- Prompt template: `{record['template']}`"]
    if scores:
        lines += ["", "## Scores (the run's own, as recorded)", "", "```json", json.dumps(scores, indent=1), "```"]
    if settings:
        lines += ["", "## Settings of the run", "", "```json", json.dumps(settings, indent=1, sort_keys=True), "```"]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    path = Path(folder) / "README.md"
    atomic.write_text(path, str(card))
    return path


def run_settings(task_model: Path) -> dict | None:
    """The config of the run that made ``task_model`` (its run folder's run.json), if the folder is still beside it."""
    run = Path(task_model).parent / "run.json"
    return atomic.read_json(run).get("config") if run.is_file() else None
