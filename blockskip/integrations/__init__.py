"""Trainer adapters: thin run-time patches that bring blockskip into trainers you already use.

Each subpackage targets one trainer and changes nothing on disk:

- `blockskip.integrations.diffusers`: the diffusers DreamBooth-LoRA example scripts
  (`python -m blockskip.integrations.diffusers train_dreambooth_lora_flux.py --blockskip_plan plan.json ...`).
- `blockskip.integrations.kohya`: kohya-ss sd-scripts' FLUX LoRA trainer
  (`accelerate launch -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan plan.json ...`).
- `blockskip.integrations.simpletuner`: SimpleTuner 4.x's FLUX LoRA training, in-process
  (`accelerate launch -m blockskip.integrations.simpletuner --blockskip_plan plan.json <SimpleTuner options>`).

What the three share sits beside them and imports no trainer (kohya's pinned environment has
no peft and an old diffusers): `patching` (reversible attribute patches), `flags` (the
`--blockskip_*` flags), `main` (the command-line entry), `scripts` (a script run in-process),
`messages` (`[blockskip]` lines), `full_model` (stand-ins switched to their original blocks).
"""
