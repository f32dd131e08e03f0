"""tnt model: GPTConfig, the GPT network, weight accessors, hooks, LoRA adapters and checkpoint I/O."""

from .config import MLP_KINDS, ConfigError, GPTConfig
from .gpt import GPT
from .io import CheckpointError, load_model, save_model
from .lora import LORA_TARGETS, LoRAConfig, apply_lora, lora_config, merged_state_dict, parse_lora_targets

__all__ = [
    "GPT",
    "LORA_TARGETS",
    "MLP_KINDS",
    "CheckpointError",
    "ConfigError",
    "GPTConfig",
    "LoRAConfig",
    "apply_lora",
    "load_model",
    "lora_config",
    "merged_state_dict",
    "parse_lora_targets",
    "save_model",
]
