"""A small stand-in for SimpleTuner 4.10.1 (PyPI `simpletuner`), for blockskip's adapter tests.

Written from scratch against the interfaces `blockskip.integrations.simpletuner` touches in
bghira/SimpleTuner as released in 4.10.1 (no upstream code is copied; SimpleTuner is AGPL):

- `simpletuner.helpers.training.trainer.Trainer(config=dict | None, ...)`: parses the config with
  `helpers.configuration.loader.load_config` (dict keys `--name`; `None`: `CONFIG_BACKEND=cmd`
  parses `sys.argv`, `json` reads `CONFIG_PATH` + `.json`), builds the model family object
  `ModelRegistry.model_families()[model_family](config, accelerator)` as `trainer.model`, and
  `run()` calls, in upstream order, the `init_*` steps that matter here: data backend (VAE and
  text-embed caches, crops fixed at cache time), `init_load_base_model` (`load_model(
  move_to_device=False)`), `init_precision`, TREAD / DiffusionBlocks set-up, freezing,
  `init_trainable_peft_adapter` (`add_lora_adapter`), `move_models`, `resume_and_prepare`, `train`;
- `ModelFoundation`: `load_model` (`MODEL_CLASS.from_pretrained(path, subfolder="transformer",
  torch_dtype=weight_dtype)`), `get_lora_target_layers`, `add_lora_adapter` (`LoraConfig(
  target_modules=get_lora_target_layers())`, `self.model.add_adapter`), `prepare_batch(batch, state)`
  (latents from `latent_batch`, `noise = randn_like`, `sample_flow_sigmas(batch=, state=)`, noisy
  latents, `prepare_batch_conditions`), `sample_flow_sigmas` (sigmoid of a normal, optional
  static/auto shift or uniform schedule; `timesteps = sigmas * 1000`), `save_lora_weights`
  (through the family's pipeline class), `model_predict` + `loss` (flow matching);
- `Flux` with `get_lora_target_layers()` driven by `--flux_lora_target` (`all`, `all+ffs`, `tiny`, ...);
- its own `FluxTransformer2DModel` copy whose `FluxSingleTransformerBlock` takes and returns the
  joint `[text; image]` sequence, built on diffusers' classes so it loads a diffusers checkpoint;
- the loop: `prepared = self.model.prepare_batch(batch, self.state)`, `model_predict`, `loss`,
  backward, optimizer step, checkpoints through accelerate's save-state hook and
  `self.model.save_lora_weights(dir, transformer_lora_layers=get_peft_model_state_dict(...))`, the
  final save the same way.

Differences, none of them in what the adapter touches: a handful of options, one image dataset,
square-ish buckets (short side to `resolution`, long side floored to 16 px), no validation,
trackers, EMA or hub; `trainer.trace` records what each step used (for the tests).
"""

__version__ = "4.10.1-standin"
