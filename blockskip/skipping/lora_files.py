"""The files of a LoRA saved by `save_lora`: their names, and the plan recorded inside the weights.

`save_lora` writes the plan into the weights' safetensors metadata under `blockskip_plan`, so the
weights file alone says how it was trained, and `blockskip_plan.json` beside it is a readable copy.
A folder whose copy disagrees with the weights is the trace of an interrupted save.

Example:
    >>> import torch, tempfile
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     weights = Path(folder) / LORA_WEIGHT_NAME
    ...     save_file({"a": torch.zeros(1)}, str(weights), metadata={PLAN_METADATA_KEY: '{"skip": {"leading": 2}}'})
    ...     plan_in_weights(weights)
    {'skip': {'leading': 2}}
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PLAN_METADATA_KEY = "blockskip_plan"


def plan_in_weights(weights_file: str | Path) -> dict | None:
    """The plan recorded in a LoRA weights file's metadata, or None where it has none."""
    with safe_open(str(weights_file), framework="pt") as opened:
        recorded = (opened.metadata() or {}).get(PLAN_METADATA_KEY)
    return json.loads(recorded) if recorded is not None else None
