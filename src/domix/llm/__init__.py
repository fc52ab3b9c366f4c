"""Causal LMs: instruction fine-tuning with composed LoRA modules (DoMIX) or a baseline, folding,
and multiple-choice evaluation (log-likelihood and generate-then-extract).

data.py instruction jsonl and templates; config.py settings; model.py build/save/load/export;
train.py the ``domix instruct`` run; choice.py ``domix eval-choice``; harness.py lm-evaluation-harness.
"""
