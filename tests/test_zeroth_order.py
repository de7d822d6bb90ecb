"""Zeroth-order steps: they estimate the true directional derivative, restore exactly, cost a forward
pass of memory, select BP/ZO with the configured probability, and compose with block skipping."""

import math

import pytest
import torch
from peft import LoraConfig

from blockskip import apply_block_skip, lora_target_modules, measure_peak_memory, remove_block_skip
from blockskip.zeroth_order import (
    SelectiveOptimization,
    SubspaceGradient,
    TimestepAwareProbability,
    ZerothOrderOptimizer,
    ZerothOrderTextualInversion,
    embedding_row,
)
from tiny_models import build_tiny

FLUX = "FluxTransformer2DModel"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _with_lora(case, skip_plan=None, dtype=torch.float32):
    model = case.model
    handle = apply_block_skip(model, skip_plan) if skip_plan is not None else None
    model.requires_grad_(False)
    targets = lora_target_modules(model, TARGETS) if handle is not None else TARGETS
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    return model.to(dtype), handle


def _loss(case, model, kwargs, target):
    return torch.nn.functional.mse_loss(case.output(model(**kwargs)), target)


@pytest.fixture
def flux_lora():
    case = build_tiny(FLUX)
    model, _ = _with_lora(case, dtype=torch.float64)
    kwargs = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in case.inputs(seed=0, batch=2).items()}
    with torch.no_grad():
        target = torch.randn_like(case.output(model(**kwargs)))
    return case, model, kwargs, target


@pytest.mark.parametrize("estimator", ["central", "forward"])
def test_the_estimate_approaches_the_true_directional_derivative(flux_lora, estimator):
    """As ε shrinks the estimate converges to ∇L·z from autograd (down to ε = 1e-3: below, the
    tiny model's float32 internals, such as its rotary tables, add rounding noise)."""
    case, model, kwargs, target = flux_lora
    params = [p for p in model.parameters() if p.requires_grad]
    loss = _loss(case, model, kwargs, target)
    gradients = torch.autograd.grad(loss, params)
    errors = []
    for epsilon in (1e-1, 1e-2, 1e-3):
        optimizer = ZerothOrderOptimizer(params, epsilon=epsilon, estimator=estimator, seed=3)
        seed = optimizer.query_seed(0, 0)
        true = sum(float((g * z).sum()) for g, z in zip(gradients, optimizer.directions(seed)))
        estimated, at_theta = optimizer.estimate(lambda: _loss(case, model, kwargs, target), (seed,))
        errors.append(abs(estimated[0] - true) / abs(true))
        if estimator == "forward":
            assert at_theta == pytest.approx(float(loss), rel=1e-9)
    if estimator == "central":  # error O(ε²); the forward estimator's O(ε) bias can change sign
        assert errors == sorted(errors, reverse=True)
    assert errors[-1] < (1e-3 if estimator == "central" else 5e-2)


@pytest.mark.parametrize("estimator", ["central", "forward"])
@pytest.mark.parametrize("update", ["sgd", "adam"])
def test_a_zero_update_leaves_the_parameters_bit_identical(flux_lora, estimator, update):
    case, model, kwargs, target = flux_lora
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = ZerothOrderOptimizer(params, lr=0.0, epsilon=1e-2, queries=3, estimator=estimator, update=update)
    for _ in range(3):
        optimizer.step(lambda: _loss(case, model, kwargs, target))
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_arithmetic_restore_drifts_by_rounding_only(flux_lora):
    case, model, kwargs, target = flux_lora
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = ZerothOrderOptimizer(params, lr=0.0, epsilon=1e-2, exact_restore=False)
    optimizer.step(lambda: _loss(case, model, kwargs, target))
    assert max(float((p - b).abs().max()) for p, b in zip(params, before)) < 1e-15


def test_sgd_steps_lower_the_loss_and_replay_from_their_seeds(flux_lora):
    case, model, kwargs, target = flux_lora
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    closure = lambda: _loss(case, model, kwargs, target)  # noqa: E731
    first = float(closure())
    optimizer = ZerothOrderOptimizer(params, lr=2e-3, epsilon=1e-3, queries=4, seed=1)
    for _ in range(30):
        optimizer.step(closure)
    assert float(closure()) < first
    trained = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    replay = ZerothOrderOptimizer(params, lr=2e-3, epsilon=1e-3, queries=4, seed=1)
    for _ in range(30):
        replay.step(closure)
    assert all(torch.equal(p, t) for p, t in zip(params, trained))


def test_a_zeroth_order_step_costs_the_memory_of_a_forward_pass():
    case = build_tiny(FLUX)
    model, _ = _with_lora(case)
    kwargs = case.inputs(seed=0, batch=2)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        target = torch.randn_like(case.output(model(**kwargs)))
    closure = lambda: _loss(case, model, kwargs, target)  # noqa: E731
    with measure_peak_memory("cpu") as forward, torch.no_grad():
        closure()
    optimizer = ZerothOrderOptimizer(params, lr=1e-4)
    with measure_peak_memory("cpu") as zo:
        optimizer.step(closure)
    with measure_peak_memory("cpu") as bp:
        closure().backward()
    lora_bytes = sum(p.numel() * p.element_size() for p in params)
    # A forward, plus the saved copy of the LoRA tensors and one direction z being drawn.
    assert zo.peak_increase_bytes <= forward.peak_increase_bytes + 2 * lora_bytes + 4096
    assert zo.peak_increase_bytes < 0.6 * bp.peak_increase_bytes
    print(f"\npeak: forward {forward.peak_increase_bytes}, ZO step {zo.peak_increase_bytes}, BP step {bp.peak_increase_bytes}")


def test_block_skipping_composes_with_zeroth_order_steps():
    """Skipped blocks never run in the ZO forwards ("none" residuals), and LoRA lives in kept blocks only."""
    case = build_tiny(FLUX)
    model, handle = _with_lora(case, {"skip": {"leading": 2, "trailing": 1}, "residuals": {"mode": "none"}, "offload": "none"})
    kwargs = case.inputs(seed=0, batch=1)
    calls = []
    hooks = [block.register_forward_hook(lambda *_: calls.append(1)) for block in handle.originals.values()]
    params = [p for p in model.parameters() if p.requires_grad]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    skipped_prefixes = tuple(f"{name}." for name in handle.originals)
    assert len(skipped_prefixes) == 3
    assert names and not any(name.startswith(skipped_prefixes) for name in names)
    with torch.no_grad():
        target = torch.randn_like(case.output(model(**kwargs)))
    optimizer = ZerothOrderOptimizer(params, lr=1e-3)
    result = optimizer.step(lambda: _loss(case, model, kwargs, target))
    assert math.isfinite(result.loss) and calls == []
    for hook in hooks:
        hook.remove()
    remove_block_skip(model)


def test_selective_choices_follow_the_configured_probability():
    selector = SelectiveOptimization(probability=lambda t, s: 0.3, seed=0)
    draws = 4000
    bp = sum(selector.choose(0.5, 0.5) == "bp" for _ in range(draws))
    standard_error = math.sqrt(0.3 * 0.7 / draws)
    assert abs(bp / draws - 0.3) < 4 * standard_error
    assert selector.counts == {"bp": bp, "zo": draws - bp}


def test_the_default_probability_keeps_bp_away_from_high_timesteps_and_favours_zo_later():
    p = TimestepAwareProbability()
    assert p(0.1, 0.0) > 0.99 and p(0.1, 1.0) > 0.95
    assert p(0.9, 0.0) > p(0.9, 0.5) > p(0.9, 1.0)
    for progress in (0.0, 0.5, 1.0):
        values = [p(t / 10, progress) for t in range(11)]
        assert values == sorted(values, reverse=True)
    selector = SelectiveOptimization(seed=1)
    late_high = sum(selector.choose(0.95, 0.9) == "bp" for _ in range(500))
    early_low = sum(selector.choose(0.2, 0.1) == "bp" for _ in range(500))
    assert late_high < 25 and early_low > 475
    with pytest.raises(ValueError, match="gave 1.5"):
        SelectiveOptimization(probability=lambda t, s: 1.5).choose(0.5, 0.5)


def test_the_subspace_gradient_removes_the_directions_the_iterates_did_not_move_in():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 3))[0].T  # 3 directions the iterates move in
    subspace = SubspaceGradient(tau=32, nu=1e-3)
    for _ in range(31):
        subspace.observe([torch.randn(3) @ basis])
        assert subspace.removed == 0  # nothing removed before the first refresh
    subspace.observe([torch.randn(3) @ basis])
    assert 0 < subspace.removed <= 31
    gradient = torch.randn(16)
    projected = subspace([gradient])[0]
    noise = subspace.noise_directions.float()
    assert float((noise @ projected).abs().max()) < 1e-5
    assert float((projected - gradient).norm()) > 0


def test_zeroth_order_textual_inversion_learns_a_table_row_and_leaves_the_rest():
    table = torch.nn.Embedding(6, 8)
    others = table.weight.detach().clone()
    target = torch.linspace(-1, 1, 8)
    inversion = ZerothOrderTextualInversion(embedding_row(table, 2), lr=5e-2, seed=0)
    first = float(((table.weight[2] - target) ** 2).sum())
    for _ in range(300):
        inversion.step(lambda: ((table.weight[2] - target) ** 2).sum())
    assert float(((table.weight[2] - target) ** 2).sum()) < 1e-2 * first
    rows = [index for index in range(6) if index != 2]
    assert torch.equal(table.weight.detach()[rows], others[rows])
    assert inversion.subspace.observed == 300 and inversion.subspace.removed > 0  # refreshed at step 128 and 256
    drawn = inversion.timesteps.sample(1000, torch.Generator().manual_seed(0))
    assert float(drawn.min()) >= 0.5 and float(drawn.max()) < 0.9  # PUTS


def test_the_shapes_encoder_trains_a_new_word_in_place():
    from blockskip.shapes import ShapesTextEncoder

    encoder = ShapesTextEncoder()
    vector = encoder.token_vector("sks", like="circle")
    assert torch.equal(vector, encoder.word_vector("circle"))
    before, _ = encoder(["large sks on navy"])
    with torch.no_grad():
        vector.add_(1.0)
    after, _ = encoder(["large sks on navy"])
    torch.testing.assert_close(after[0, 1] - before[0, 1], torch.ones(64))


def test_bad_settings_are_refused():
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="no tensors"):
        ZerothOrderOptimizer([])
    with pytest.raises(ValueError, match="epsilon > 0"):
        ZerothOrderOptimizer([weight], epsilon=0)
    with pytest.raises(ValueError, match="estimator is one of"):
        ZerothOrderOptimizer([weight], estimator="sideways")
    with pytest.raises(ValueError, match="tau >= 2"):
        SubspaceGradient(tau=1)
