"""Sanity tests for the tiny diffusers fixtures in ``tests/tiny_models.py``."""

from __future__ import annotations

import contextlib
import functools
import inspect

import pytest
import torch

try:
    from tiny_models import FAMILIES, TinyCase, build_tiny
except ImportError:  # tests/ imported as a package
    from tests.tiny_models import FAMILIES, TinyCase, build_tiny

# What each block list's blocks return (checked against diffusers 0.42.1 source and
# by ``test_block_return_convention``):
#   "EH": (encoder_hidden_states, hidden_states)   "HE": (hidden_states, encoder_hidden_states)
#   "H":  hidden_states only (single-stream blocks get the text/image concatenation as hidden_states,
#         or attend to the text through cross-attention)
CONVENTIONS: dict[tuple[str, str], str] = {
    ("FluxTransformer2DModel", "transformer_blocks"): "EH",
    ("FluxTransformer2DModel", "single_transformer_blocks"): "EH",  # splits the concatenation itself
    ("Flux2Transformer2DModel", "transformer_blocks"): "EH",
    ("Flux2Transformer2DModel", "single_transformer_blocks"): "H",  # called with encoder_hidden_states=None
    ("SD3Transformer2DModel", "transformer_blocks"): "EH",  # last block returns (None, hidden_states)
    ("SanaTransformer2DModel", "transformer_blocks"): "H",
    ("QwenImageTransformer2DModel", "transformer_blocks"): "EH",
    ("WanTransformer3DModel", "blocks"): "H",
    ("HunyuanVideoTransformer3DModel", "transformer_blocks"): "HE",
    ("HunyuanVideoTransformer3DModel", "single_transformer_blocks"): "HE",
    ("LTXVideoTransformer3DModel", "transformer_blocks"): "H",
    ("CogVideoXTransformer3DModel", "transformer_blocks"): "HE",
    ("ChromaTransformer2DModel", "transformer_blocks"): "EH",
    ("ChromaTransformer2DModel", "single_transformer_blocks"): "H",
    ("Lumina2Transformer2DModel", "layers"): "H",
    ("AuraFlowTransformer2DModel", "joint_transformer_blocks"): "EH",
    ("AuraFlowTransformer2DModel", "single_transformer_blocks"): "H",
}


# ChromaTransformer2DModel imports FluxPosEmbed through a deprecated diffusers path.
pytestmark = pytest.mark.filterwarnings("ignore:`FluxPosEmbed` is deprecated:FutureWarning")


@functools.lru_cache(maxsize=None)
def _case(name: str) -> TinyCase:
    """One shared build per family (tests restore any block they patch)."""
    return build_tiny(name)


def _run(case: TinyCase, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return case.output(case.model(**inputs))


def _block_items(case: TinyCase):
    for attr in case.block_lists:
        for i, block in enumerate(getattr(case.model, attr)):
            yield attr, i, block


def _stream_args(forward, args: tuple, kwargs: dict):
    """(hidden_states, encoder_hidden_states) of a call to the bound ``forward``, positional or keyword."""
    bound = inspect.signature(forward).bind(*args, **kwargs).arguments
    return bound["hidden_states"], bound.get("encoder_hidden_states")


@contextlib.contextmanager
def _patched_forward(block: torch.nn.Module, fn):
    """Temporarily replace ``block.forward`` (nn.Module.__call__ looks it up on the instance)."""
    original = block.forward
    block.forward = lambda *args, **kwargs: fn(original, *args, **kwargs)
    try:
        yield
    finally:
        del block.forward


def _identity(kind: str):
    def fn(original, *args, **kwargs):
        hs, ehs = _stream_args(original, args, kwargs)
        return {"H": hs, "EH": (ehs, hs), "HE": (hs, ehs)}[kind]

    return fn


def test_families_listed():
    assert len(FAMILIES) == len(set(FAMILIES)) == 12
    assert {n for n, _ in CONVENTIONS} == set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_builds_real_model_with_enough_blocks(name):
    import diffusers

    case = _case(name)
    assert type(case.model) is getattr(diffusers, name)
    assert not case.model.training
    params = list(case.model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
    assert case.block_lists == tuple(attr for (n, attr) in CONVENTIONS if n == name)
    for attr in case.block_lists:
        assert isinstance(getattr(case.model, attr), torch.nn.ModuleList)
        assert len(getattr(case.model, attr)) >= 3, attr


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_finite_and_text_dependent(name):
    case = _case(name)
    inputs = case.inputs(seed=0, batch=2)
    assert inputs["return_dict"] is False
    out = _run(case, inputs)
    assert out.shape[0] == 2
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0

    other_text = torch.randn(inputs["encoder_hidden_states"].shape, generator=torch.Generator().manual_seed(123))
    changed = _run(case, {**inputs, "encoder_hidden_states": other_text})
    assert torch.isfinite(changed).all()
    assert (changed - out).abs().max() > 1e-2 * out.abs().max()  # every family is >= 4% in practice


@pytest.mark.parametrize("name", FAMILIES)
def test_deterministic(name):
    case = _case(name)
    a, b = case.inputs(seed=3, batch=2), case.inputs(seed=3, batch=2)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    assert not torch.equal(a["encoder_hidden_states"], case.inputs(seed=4, batch=2)["encoder_hidden_states"])

    rebuilt = build_tiny(name)
    sd, sd2 = case.model.state_dict(), rebuilt.model.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)

    inputs = case.inputs(seed=0)
    assert torch.equal(_run(case, inputs), _run(rebuilt, inputs))


@pytest.mark.parametrize("name", FAMILIES)
def test_block_return_convention(name):
    """Record every block call and check its outputs against CONVENTIONS (token counts differ, so
    the shapes tell the two streams apart)."""
    case = _case(name)
    calls = []

    def record(original, *args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((_stream_args(original, args, kwargs), out))
        return out

    with contextlib.ExitStack() as stack:
        for _, _, block in _block_items(case):
            stack.enter_context(_patched_forward(block, record))
        _run(case, case.inputs())

    items = list(_block_items(case))
    assert len(calls) == len(items)
    for (attr, i, _), ((hs, ehs), out) in zip(items, calls):
        kind = CONVENTIONS[(name, attr)]
        assert hs.shape[-1] <= 64
        where = f"{attr}[{i}]"
        if kind == "H":
            assert isinstance(out, torch.Tensor) and out.shape == hs.shape, where
            continue
        assert isinstance(out, tuple) and len(out) == 2, where
        assert ehs is not None and ehs.shape != hs.shape, where
        new_ehs, new_hs = out if kind == "EH" else out[::-1]
        assert new_hs.shape == hs.shape, where
        if name == "SD3Transformer2DModel" and i == len(items) - 1:
            assert new_ehs is None  # context_pre_only last block
        else:
            assert new_ehs.shape == ehs.shape, where


@pytest.mark.parametrize("name", FAMILIES)
def test_every_block_matters(name):
    """Replacing any single block with identity changes the output."""
    case = _case(name)
    inputs = case.inputs(seed=0)
    base = _run(case, inputs)
    for attr, i, block in _block_items(case):
        with _patched_forward(block, _identity(CONVENTIONS[(name, attr)])):
            skipped = _run(case, inputs)
        assert torch.isfinite(skipped).all(), f"{attr}[{i}]"
        # every block moves the output by >= 4% of its max in practice
        assert (skipped - base).abs().max() > 1e-2 * base.abs().max(), f"{attr}[{i}] is (nearly) a no-op"
    assert torch.equal(_run(case, inputs), base)  # patches fully undone
