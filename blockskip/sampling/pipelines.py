"""RALU as a reversible patch on diffusers `FluxPipeline` and `StableDiffusion3Pipeline`.

The pipeline's own `__call__` runs unchanged (prompts, guidance, callbacks, output types); three
of its parts are swapped for the duration of the patch: `prepare_latents` starts from half-size
noise (every other latent pixel of the pipeline's own full-size noise), the scheduler steps
through RALU's stages (and changes the latent's resolution at each stage end), and the
transformer is given the position ids (FLUX) or the mixed-resolution forward (SD3) of the current
sequence. RALU's stage step counts replace `num_inference_steps`. The token grid is read from the
pipeline's own starting latents, so forks of these pipelines with another `vae_scale_factor`
convention (SimpleTuner's) work too.

    >>> from blockskip.sampling import RALUSettings
    >>> apply_ralu(object(), RALUSettings.preset("4x"))
    Traceback (most recent call last):
    ...
    TypeError: RALU supports FluxPipeline and StableDiffusion3Pipeline, not object
"""

from __future__ import annotations

import types

import torch

from .edges import cell_scores
from .mixed_tokens import MixedLayout, half_size_tokens, pack_tokens, unpack_tokens
from .run import RALURun
from .sd3_mixed import sd3_mixed_forward
from .settings import RALUSettings

_SESSION = "_blockskip_ralu"
SUPPORTED = ("FluxPipeline", "StableDiffusion3Pipeline")


class _Output(tuple):
    """What `scheduler.step(..., return_dict=True)` returns: a tuple with `.prev_sample`."""

    @property
    def prev_sample(self):
        return self[0]


class RALUScheduler:
    """Stands in for the pipeline's flow-matching scheduler while RALU is applied; everything but
    the timesteps and the step is the original's (its config, `order`, ...)."""

    def __init__(self, original, session: _Session):
        self.__dict__.update(original=original, session=session, timesteps=None, sigmas=None)

    def __getattr__(self, name):
        return getattr(self.__dict__["original"], name)

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        calls = self.session.run.sigmas
        self.sigmas = torch.cat([calls, torch.zeros(1)]).to(device)
        self.timesteps = (calls * self.original.config.num_train_timesteps).to(device)

    def set_begin_index(self, begin_index: int = 0):
        pass

    def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        session = self.session
        tokens = session.run.step(session.to_tokens(model_output), session.to_tokens(sample))
        result = session.from_tokens(tokens)
        if session.run.finished:
            session.run = None  # the transformer is left alone outside a sampling call
        return _Output((result,)) if return_dict else (result,)


class _Session:
    """The patch's state: the originals to restore and the run of the current call."""

    def __init__(self, pipeline, settings: RALUSettings):
        self.pipeline, self.settings, self.run = pipeline, settings, None
        self.flux = type(pipeline).__name__ == "FluxPipeline"
        self.patch = 2 if self.flux else pipeline.transformer.config.patch_size
        self.channels = pipeline.transformer.config.in_channels // 4 if self.flux else pipeline.transformer.config.in_channels
        self.original_scheduler = pipeline.scheduler
        self.hook, self.had_forward, self.stock_forward = None, False, None

    # --- latents: FLUX's are packed tokens already; SD3's are 4-D except in the mixed stage
    def to_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if latents.dim() == 3 else pack_tokens(latents, self.patch)

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        layout = self.run.layout
        if self.flux or (layout is not None and not layout.full and layout.high.any()):
            return tokens
        height, width = (self.run.full_height, self.run.full_width) if layout is None or layout.full else (layout.height, layout.width)
        return unpack_tokens(tokens, height, width, self.channels, self.patch)

    # --- where the edges are: decode Tweedie's estimate at half size, Canny, sum per cell
    def score_cells(self, clean: torch.Tensor, layout: MixedLayout) -> torch.Tensor:
        vae = self.pipeline.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0

        def decode(latents):
            with torch.no_grad():
                return vae.decode((latents / vae.config.scaling_factor + shift).to(vae.dtype), return_dict=False)[0]

        latents = unpack_tokens(clean, layout.height, layout.width, self.channels, self.patch)
        return cell_scores(latents, layout.width, self.patch, self.settings.edge_detector, self.settings.edge_thresholds, decode)

    def begin(self, height: int, width: int, generator) -> None:
        """A new call: a full-resolution grid of `height`×`width` tokens."""
        if self.settings.stages > 1 and (height % 2 or width % 2):
            unit = self.pipeline.vae_scale_factor * self.patch
            raise ValueError(f"RALU with {self.settings.stages} stages halves the token grid, so it must be even; got "
                             f"{height}×{width} tokens (image sides should be multiples of {2 * unit} px)")
        if isinstance(generator, list):
            generator = generator[0]  # one region set and one noise draw for the batch
        self.run = RALURun(self.settings, height, width, self.channels, self.patch, self.score_cells, generator)

    def token_grid(self, latents: torch.Tensor, ids: torch.Tensor | None) -> tuple[int, int]:
        """The token grid of the pipeline's own full-size starting latents (its ids for FLUX)."""
        if latents.dim() == 4:
            return latents.shape[-2] // self.patch, latents.shape[-1] // self.patch
        ids = ids.reshape(-1, 3)
        return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1

    def half_size(self, latents: torch.Tensor) -> torch.Tensor:
        """Full-size starting noise -> the half-size noise of stage 1 (every other latent pixel, as RALU does)."""
        if latents.dim() == 4:
            return latents[..., ::2, ::2]
        return half_size_tokens(latents, self.run.full_height, self.run.full_width, self.channels, self.patch)


def _prepare_latents(session: _Session):
    original = session.pipeline.prepare_latents

    def prepare_latents(batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
        full = original(batch_size, num_channels_latents, height, width, dtype, device, generator, latents)
        noise, ids = full if isinstance(full, tuple) else (full, None)
        session.begin(*session.token_grid(noise, ids), generator)
        if session.settings.stages == 1:
            return full
        noise = session.half_size(noise)
        if ids is None:
            return noise
        low = session.run.position_ids.to(ids.device, ids.dtype)
        return noise, (low.expand(ids.shape[0], -1, -1) if ids.dim() == 3 else low)  # batched ids where the pipeline uses them

    return prepare_latents


def _flux_ids_hook(session: _Session):
    def substitute_ids(module, args, kwargs):
        # Only inside a sampling call (pipelines run without grad): a pipeline may share its
        # transformer with a training loop (SimpleTuner validates with the training model).
        ids = kwargs.get("img_ids")
        if ids is not None and session.run is not None and not torch.is_grad_enabled():
            kwargs["img_ids"] = session.run.position_ids.to(ids.device, ids.dtype)
        return args, kwargs

    return session.pipeline.transformer.register_forward_pre_hook(substitute_ids, with_kwargs=True)


def _sd3_forward(session: _Session, transformer):
    stock = transformer.forward

    def forward(self, hidden_states, *args, return_dict: bool = True, **kwargs):
        if hidden_states.dim() != 3:
            return stock(hidden_states, *args, return_dict=return_dict, **kwargs)
        names = ("encoder_hidden_states", "pooled_projections", "timestep")
        values = dict(zip(names, args), **{k: v for k, v in kwargs.items() if k in names})
        if kwargs.get("block_controlnet_hidden_states") is not None:
            raise NotImplementedError("RALU's mixed stage does not support ControlNet residuals")
        out = sd3_mixed_forward(self, hidden_states, session.run.layout, values["timestep"], values["encoder_hidden_states"],
                                values["pooled_projections"], kwargs.get("joint_attention_kwargs"), kwargs.get("skip_layers"))
        return (out,) if not return_dict else types.SimpleNamespace(sample=out)

    return forward


def apply_ralu(pipeline, settings: RALUSettings | None = None):
    """Make `pipeline` sample with RALU until `remove_ralu(pipeline)`; returns the pipeline.

    Example (any FLUX or SD3 pipeline; a tiny one is built from config in tests/test_ralu_pipelines.py)::

        apply_ralu(pipe, RALUSettings.preset("4x"))
        image = pipe("a cat", height=1024, width=1024).images[0]   # 18 model calls
        remove_ralu(pipe)
    """
    kind = type(pipeline).__name__
    if kind not in SUPPORTED:
        raise TypeError(f"RALU supports {' and '.join(SUPPORTED)}, not {kind}")
    if getattr(pipeline, _SESSION, None) is not None:
        raise RuntimeError("RALU is already applied to this pipeline; remove_ralu(pipeline) first")
    settings = settings or RALUSettings.preset("4x")
    session = _Session(pipeline, settings)
    pipeline.__dict__["prepare_latents"] = _prepare_latents(session)
    pipeline.__dict__["scheduler"] = RALUScheduler(session.original_scheduler, session)  # the pipeline's config keeps the original
    if session.flux:
        session.hook = _flux_ids_hook(session)
    else:
        transformer = pipeline.transformer
        session.had_forward = "forward" in transformer.__dict__
        session.stock_forward = transformer.__dict__.get("forward")
        transformer.forward = types.MethodType(_sd3_forward(session, transformer), transformer)
    pipeline.__dict__[_SESSION] = session
    return pipeline


def remove_ralu(pipeline):
    """Undo `apply_ralu`: the pipeline's scheduler, latents and transformer are the originals again."""
    session = pipeline.__dict__.pop(_SESSION, None)
    if session is None:
        raise RuntimeError("RALU is not applied to this pipeline")
    pipeline.__dict__["scheduler"] = session.original_scheduler
    del pipeline.__dict__["prepare_latents"]
    if session.hook is not None:
        session.hook.remove()
    else:
        del pipeline.transformer.__dict__["forward"]
        if session.had_forward:
            pipeline.transformer.forward = session.stock_forward
    return pipeline


__all__ = ["RALUScheduler", "apply_ralu", "remove_ralu"]
