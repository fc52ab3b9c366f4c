"""LoRA, LoRA-FA and DoRA through PEFT: the parameter-efficient baselines (docs/methods.md §4)."""
