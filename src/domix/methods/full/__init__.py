"""Full fine-tuning: every weight trains (the upper baseline of docs/methods.md §4)."""
