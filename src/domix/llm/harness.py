"""Handing a model to lm-evaluation-harness (optional: ``pip install 'domix[lm-eval]'``).

>>> from domix.llm.harness import harness_model
>>> import lm_eval
>>> lm = harness_model("runs/instruct/model")          # a domix instruct model: bridges live, not folded
>>> lm_eval.simple_evaluate(model=lm, tasks=["piqa", "arc_easy"])
"""

from __future__ import annotations

from torch import nn

from domix.errors import DomixError


def harness_model(model: str | nn.Module, tokenizer=None, batch_size: int = 8, device: str = "cpu", max_length: int | None = None):
    """lm-eval's HFLM around a model object or a folder (domix instruct model, exported folder, any causal LM).

    A PEFT model is merged first (HFLM takes a transformers model); a DoMIX-bridged model goes in as it is.
    """
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise DomixError("lm-evaluation-harness is not installed; pip install 'domix[lm-eval]' (or lm_eval)") from None
    if isinstance(model, str):
        from domix.llm.model import load_for_eval

        model, tokenizer, _ = load_for_eval(model, device)
    elif tokenizer is None:
        raise DomixError("give the tokenizer along with a model object")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
