"""Comparing fine-tuning methods: running them, then reporting the results."""
