"""Tiny models of real peers, built and saved with the peers' own code (transformers), for bitwise comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def mixtral(experts: int, directory: Path) -> Any:
    """Build a tiny random Mixtral with ``experts`` local experts and save it with save_pretrained."""
    from transformers import MixtralConfig, MixtralForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.manual_seed(experts)
    config = MixtralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=experts,
        num_experts_per_tok=2,
        max_position_embeddings=32,
    )
    model = MixtralForCausalLM(config)
    model.save_pretrained(directory)
    return model
