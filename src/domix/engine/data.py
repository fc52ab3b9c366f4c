"""A domain's corpus as training and held-out blocks of token ids: what every pre-training method trains on."""

from __future__ import annotations

from dataclasses import dataclass

from domix.corpus import Corpus, split_heldout, tokenize_blocks
from domix.tokens import TokenBlocks


@dataclass
class DomainData:
    corpus: Corpus
    tokens: int
    train: TokenBlocks  # (sequences, seq_len) token ids, read from the memory-mapped cache when indexed
    heldout: TokenBlocks

    @classmethod
    def build(cls, corpus: Corpus, tokenizer, objective: str, cfg) -> "DomainData":
        blocks = tokenize_blocks(corpus, tokenizer, cfg.seq_len, append_eos=objective == "clm")
        train, heldout = split_heldout(blocks, cfg.heldout_fraction, cfg.heldout_max_blocks, cfg.seed, corpus.name)
        return cls(corpus=corpus, tokens=blocks.numel(), train=train, heldout=heldout)

