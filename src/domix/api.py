"""What ``from domix import ...`` gives a library user: the few entry points the commands are built on.

The commands and these functions are one code path: ``domix export`` calls :func:`export`,
``domix evaluate`` :func:`evaluate`. Settings are the same dataclasses the YAML files and flags fill.
"""

from __future__ import annotations

from pathlib import Path

from domix.sources import Columns


def export(task_model: str | Path, out: str | Path, model: str | None = None, overwrite: bool = False) -> Path:
    """Fold a task model (the ``model/`` folder of ``finetune`` or ``instruct``) into a plain transformers folder.

    The result loads with ``AutoModelForSequenceClassification`` (a classifier) or
    ``AutoModelForCausalLM`` (an instruct model), no domix needed. ``model``: the base to rebuild on
    (default: the one the task model's record names). ``out`` must be new unless ``overwrite``, and is
    never the task model itself. Returns ``out``.
    """
    from domix.engine.runfolder import check_new_output
    from domix.finetuning.model import export as export_classifier
    from domix.llm.model import export_causal, is_causal_task_model

    check_new_output(out, [task_model], overwrite, what="an exported model")
    (export_causal if is_causal_task_model(task_model) else export_classifier)(task_model, out, model)
    return Path(out)


def evaluate(task_model: str | Path, data: str | Path, predictions: str | Path | None = None, model: str | None = None,
             columns: Columns = Columns(), split: str | None = None, max_length: int | None = None) -> dict[str, float]:
    """Accuracy and F1 scores of a classifier (a task model or an exported folder) on labeled ``data``.

    ``data``: a jsonl/CSV/TSV/Parquet file, a ``save_to_disk`` folder or a dataset name (its ``split``,
    default test). ``predictions``: also write one prediction a line to this jsonl file. ``model``: the
    base to rebuild a task model on (default: its record's). ``max_length`` (default: domix finetune's) applies to exported
    folders only (task models know theirs).
    """
    from domix.engine.runfolder import check_new_file
    from domix.finetuning.evaluate import evaluate_file

    if predictions:
        check_new_file(predictions, [data])
    return evaluate_file(task_model, data, predictions, max_length, base=model, columns=columns, split=split)
