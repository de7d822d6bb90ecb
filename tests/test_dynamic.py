"""DyDiT's dynamic width and tokens as patches: exact when open, reversible, gates that cut FLOPs,
a FLOPs penalty that trains the routers, and composition with block skipping (FLUX and SD3)."""

import pytest
import torch
from tiny_models import build_tiny

from blockskip import apply_block_skip, get_block_skip, remove_block_skip
from blockskip.dynamic import DynamicSettings, DynamicSettingsError, apply_dynamic_computation, apply_dynamic_tokens, apply_dynamic_width

FAMILIES = ["FluxTransformer2DModel", "SD3Transformer2DModel", "QwenImageTransformer2DModel", "HunyuanVideoTransformer3DModel",
            "ChromaTransformer2DModel", "CogVideoXTransformer3DModel", "WanTransformer3DModel", "AuraFlowTransformer2DModel",
            "LTXVideoTransformer3DModel", "SanaTransformer2DModel", "Flux2Transformer2DModel", "Lumina2Transformer2DModel"]
WIDTH_ONLY = {"SanaTransformer2DModel", "Lumina2Transformer2DModel"}  # a depthwise-conv MLP; per-sample text lengths


MORE_HEADS = {"Lumina2Transformer2DModel": dict(num_attention_heads=4, num_kv_heads=2, hidden_size=64)}  # tiny has 1 kv head


def patch_all(case, settings=None):
    """Dynamic width, and dynamic tokens where the family has them."""
    return apply_dynamic_computation(case.model, settings, tokens=case.name not in WIDTH_ONLY)


def run(case, seed=0, batch=2):
    with torch.no_grad():
        return case.output(case.model(**case.inputs(seed=seed, batch=batch)))


@pytest.mark.parametrize("family", FAMILIES)
def test_open_gates_leave_the_model_exact_and_removal_is_bit_identical(family):
    case = build_tiny(family)
    stock = run(case)
    handle = patch_all(case)
    handle.force_open = True
    assert torch.allclose(run(case), stock, atol=1e-5)
    handle.force_open = False  # routers start open (large biases): the eval-mode gates are all 1
    assert torch.allclose(run(case), stock, atol=1e-5)
    assert handle.flops_ratio().tolist() == pytest.approx([1.0, 1.0])
    handle.remove()
    assert torch.equal(run(case), stock)


@pytest.mark.parametrize("family", FAMILIES)
def test_closed_gates_cut_the_counted_flops_and_change_the_output(family):
    case = build_tiny(family)
    stock = run(case)
    handle = patch_all(case)
    with torch.no_grad():
        for routers in handle.routers.values():
            routers.heads.bias.fill_(-50.0)  # every head but head 0 closed
            routers.groups.bias.fill_(-50.0)  # and every MLP group but group 0
            if hasattr(routers, "tokens"):
                routers.tokens[2].bias.fill_(-50.0)  # every image token bypasses the MLP
    gated = run(case)
    ratio = handle.flops_ratio()
    assert not torch.allclose(gated, stock, atol=1e-3)
    assert (ratio < 0.75).all() and (ratio > 0).all()
    handle.remove()


def test_flops_penalty_trains_the_routers_through_the_hard_gates():
    case = build_tiny("FluxTransformer2DModel")
    handle = apply_dynamic_width(case.model, DynamicSettings(target=0.5, width_bias=0.5))
    case.model.train()
    case.model(**case.inputs(batch=2))
    loss = handle.flops_loss()
    loss.backward()
    grads = [parameter.grad for parameter in handle.parameters() if parameter.grad is not None]
    assert loss > 0 and grads and any(grad.abs().sum() > 0 for grad in grads)
    handle.remove()


def test_training_gates_are_noisy_and_eval_gates_deterministic():
    case = build_tiny("FluxTransformer2DModel")
    handle = apply_dynamic_tokens(case.model, DynamicSettings(token_bias=0.0))
    with torch.no_grad():
        case.model.eval()
        first, second = run(case), run(case)
        case.model.train()
        noisy = [run(case) for _ in range(3)]
    assert torch.equal(first, second)
    assert not torch.equal(noisy[0], noisy[1]) or not torch.equal(noisy[1], noisy[2])
    handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_composes_with_block_skipping_on_the_kept_blocks_only(family):
    case = build_tiny(family)
    skip = apply_block_skip(case.model, {"skip": {"leading": 1, "trailing": 1}})
    skipped_stock = run(case)
    handle = patch_all(case)
    assert sorted(handle.sites) == sorted(skip.kept_block_names())
    assert torch.allclose(run(case), skipped_stock, atol=1e-5)  # open gates: the skipped model unchanged
    handle.remove()
    remove_block_skip(case.model)


def test_refusals():
    case = build_tiny("FluxTransformer2DModel")
    handle = apply_dynamic_width(case.model)
    with pytest.raises(RuntimeError, match="already has dynamic computation"):
        apply_dynamic_tokens(case.model)
    handle.remove()
    for family, reason in (("SanaTransformer2DModel", "depthwise convolution"), ("Lumina2Transformer2DModel", "text of its own length")):
        with pytest.raises(TypeError, match=reason):
            apply_dynamic_tokens(build_tiny(family).model)
    with pytest.raises(DynamicSettingsError, match="target"):
        DynamicSettings(target=1.5)


def close_some_gates(handle):
    with torch.no_grad():
        for routers in handle.routers.values():
            routers.heads.bias[::2] = -50.0  # half of the optional heads closed
            routers.groups.bias[1::2] = -50.0
            if hasattr(routers, "tokens"):
                routers.tokens[2].weight.zero_()
                routers.tokens[2].bias.fill_(0.0)
                routers.tokens[0].bias.normal_(generator=torch.Generator().manual_seed(0))  # token gates differ per token


@pytest.mark.parametrize("family", FAMILIES)
def test_hard_mode_computes_only_what_is_open_and_matches_the_gated_model(family):
    from blockskip.estimate.accounting import FlopCounter

    case = build_tiny(family, **MORE_HEADS.get(family, {}))
    handle = patch_all(case)
    close_some_gates(handle)
    inputs = case.inputs(batch=1)
    with torch.no_grad():
        soft_flops = FlopCounter()
        with soft_flops:
            gated = case.output(case.model(**inputs))
        handle.hard = True
        hard_flops = FlopCounter()
        with hard_flops:
            hard = case.output(case.model(**inputs))
    assert torch.allclose(hard, gated, atol=1e-5)
    saving = 0.9 if family in WIDTH_ONLY else 0.85  # half the heads and groups; tokens too where they can be gated
    assert hard_flops.total < saving * soft_flops.total and torch.isfinite(handle.flops_ratio()).all()
    projections = [getattr(site.attention, "to_q", None) or site.attention.to_qkv_mlp_proj for site in handle.sites.values()]
    assert not handle.swapped and all(type(layer).__name__ == "Linear" for layer in projections)
    with pytest.raises(RuntimeError, match="hard mode is for inference"):
        case.model.train()
        with torch.no_grad():
            case.model(**inputs)
    case.model.eval()
    handle.remove()


def test_hard_mode_honours_a_trained_lora():
    case = lora_case()
    handle = apply_dynamic_computation(case.model)
    close_some_gates(handle)
    inputs = case.inputs(batch=1)
    with torch.no_grad():
        gated = case.output(case.model(**inputs))
        case.model.disable_adapters()
        without_lora = case.output(case.model(**inputs))
        case.model.enable_adapters()
        handle.hard = True
        hard = case.output(case.model(**inputs))
    assert not torch.allclose(gated, without_lora, atol=1e-3)  # the LoRA matters here ...
    assert torch.allclose(hard, gated, atol=1e-5)  # ... and hard mode computes it
    handle.remove()


def test_hard_mode_honours_timestep_lora_gates_per_sample():
    from blockskip.dynamic import apply_timestep_lora

    case = lora_case()
    gates = apply_timestep_lora(case.model)
    randomize_timestep_gates(gates)
    handle = apply_dynamic_computation(case.model)
    close_some_gates(handle)
    inputs = case.inputs(batch=2)  # two timesteps: the gates differ per sample
    gated = run_with(case, inputs)
    handle.hard = True
    hard = run_with(case, inputs)
    assert torch.allclose(hard, gated, atol=1e-5)
    handle.remove()
    gates.remove()


def test_hard_mode_reuses_slices_until_the_weights_change():
    case = lora_case()
    handle = apply_dynamic_computation(case.model)
    close_some_gates(handle)
    inputs = case.inputs(batch=1)
    handle.hard = True
    first = run_with(case, inputs)
    cached = len(handle.slices.slices)
    assert cached and torch.equal(run_with(case, inputs), first) and len(handle.slices.slices) == cached
    with torch.no_grad():  # an in-place update, as an optimizer step or load_state_dict makes
        for name, parameter in case.model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(2.0)
    moved = run_with(case, inputs)
    handle.hard = False
    assert not torch.allclose(moved, first, atol=1e-4) and torch.allclose(moved, run_with(case, inputs), atol=1e-5)
    case.model.double()  # .to() moves the weights without bumping their versions
    doubled = {key: value.double() if torch.is_tensor(value) and value.is_floating_point() else value for key, value in inputs.items()}
    gated = run_with(case, doubled)
    handle.hard = True
    assert torch.allclose(run_with(case, doubled), gated, atol=1e-9)
    handle.remove()
    assert not handle.slices.slices


def test_hard_mode_refuses_timestep_lora_on_gathered_mlp_layers():
    from peft import LoraConfig

    from blockskip.dynamic import apply_timestep_lora

    case = build_tiny("FluxTransformer2DModel")
    case.model.add_adapter(LoraConfig(r=2, target_modules=["proj_mlp", "ff.net.2"]))
    gates = apply_timestep_lora(case.model)
    handle = apply_dynamic_computation(case.model)
    handle.hard = True
    with pytest.raises(RuntimeError, match="timestep-LoRA gates on MLP layers"):
        run_with(case, case.inputs(batch=1))
    assert not handle.swapped  # the refusal left every layer in place
    handle.remove()
    gates.remove()


def lora_case(skip=None):
    from peft import LoraConfig

    case = build_tiny("FluxTransformer2DModel")
    if skip:
        apply_block_skip(case.model, skip)
    case.model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"]))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a trained-looking LoRA: PEFT starts B at zero
        for name, parameter in case.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return case


def test_timestep_lora_starts_as_the_static_lora_and_then_depends_on_t(tmp_path):
    from blockskip.dynamic import apply_timestep_lora, load_timestep_lora

    case = lora_case()
    inputs = case.inputs(batch=2)
    static = run_with(case, inputs)
    handle = apply_timestep_lora(case.model)
    assert torch.equal(run_with(case, inputs), static)  # zero-started gates: exactly the ordinary LoRA
    randomize_timestep_gates(handle)
    gated = run_with(case, inputs)
    assert not torch.allclose(gated, static, atol=1e-4)
    late = dict(inputs, timestep=inputs["timestep"] * 0 + 0.9)
    early = dict(inputs, timestep=inputs["timestep"] * 0 + 0.1)
    assert not torch.allclose(run_with(case, late) - run_with(case, early), torch.zeros_like(gated), atol=1e-4)
    path = handle.save(tmp_path / "gates.safetensors")
    handle.remove()
    assert torch.equal(run_with(case, inputs), static)  # removal: the static LoRA, which stock loaders read
    load_timestep_lora(case.model, path)
    assert torch.allclose(run_with(case, inputs), gated, atol=1e-6)


def test_timestep_lora_only_in_kept_blocks_and_refusals(tmp_path):
    from blockskip.dynamic import apply_timestep_lora, load_timestep_lora

    case = lora_case(skip={"skip": {"leading": 1, "trailing": 1}})
    handle = apply_timestep_lora(case.model)
    kept = [name.replace(".", "_") + "_" for name in get_block_skip(case.model).kept_block_names()]
    assert handle.routers and all(any(key.startswith(prefix) for prefix in kept) for key in handle.routers)
    path = handle.save(tmp_path / "gates.safetensors")
    handle.remove()
    other = lora_case()
    with pytest.raises(ValueError, match="other LoRA layers"):
        load_timestep_lora(other.model, path)
    with pytest.raises(ValueError, match="no LoRA layers"):
        apply_timestep_lora(build_tiny("FluxTransformer2DModel").model)


def randomize_timestep_gates(handle):
    with torch.no_grad():
        for router in handle.routers.values():
            router.weight.normal_(generator=torch.Generator().manual_seed(1))


def run_with(case, inputs):
    with torch.no_grad():
        return case.output(case.model(**inputs))


def test_estimator_prices_the_flops_target_with_the_gates_cost_model():
    from blockskip.estimate.sampling_cost import estimate_dynamic_forward

    full = estimate_dynamic_forward("FLUX.1-dev", 1.0, 512, 512)
    half = estimate_dynamic_forward("FLUX.1-dev", 0.5, 512, 512)
    assert full.ratio == pytest.approx(1.0) and 1.5 < half.ratio < 2.0
    assert 0.7 < half.gated_flops / half.flops < 1.0  # embedders, norms and the text stream's MLPs are not gated


@pytest.mark.parametrize("family", FAMILIES)
def test_timestep_lora_on_every_family_starts_static_and_follows_the_timestep(family):
    from peft import LoraConfig

    from blockskip.dynamic import apply_timestep_lora

    case = build_tiny(family)
    case.model.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, parameter in case.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(3)).mul_(0.3)
    inputs = case.inputs(batch=2)
    static = run_with(case, inputs)
    handle = apply_timestep_lora(case.model)
    assert torch.equal(run_with(case, inputs), static)
    randomize_timestep_gates(handle)
    assert not torch.allclose(run_with(case, inputs), static, atol=1e-5)
    handle.remove()
    assert torch.equal(run_with(case, inputs), static)


def test_unsupported_blocks_are_refused_by_name(monkeypatch):
    from diffusers.models.attention import BasicTransformerBlock

    from blockskip.dynamic import blocks
    from blockskip.estimate.sampling_cost import estimate_dynamic_forward

    with pytest.raises(TypeError, match="support FluxTransformerBlock.*not BasicTransformerBlock"):
        blocks.block_site(BasicTransformerBlock(dim=32, num_attention_heads=2, attention_head_dim=16))
    monkeypatch.setattr(blocks, "SUPPORTED_BLOCKS", ("FluxTransformerBlock",))  # as for a preset whose blocks are not described
    with pytest.raises(ValueError, match="not priced for SD3Transformer2DModel.*JointTransformerBlock"):
        estimate_dynamic_forward("sd3.5-medium", 0.5, 256, 256)


@pytest.mark.parametrize("preset, height, width, frames", [("qwen-image", 512, 512, None), ("chroma", 512, 512, None),
                                                            ("wan2.1-1.3b", 256, 256, 5), ("cogvideox-2b", 480, 720, 9),
                                                            ("ltx-video", 256, 256, 9), ("sana-600m", 512, 512, None),
                                                            ("flux.2-klein-4b", 256, 256, None), ("lumina-image-2.0", 256, 256, None)])
def test_estimator_prices_the_other_supported_families(preset, height, width, frames):
    from blockskip.estimate.sampling_cost import estimate_dynamic_forward

    half = estimate_dynamic_forward(preset, 0.5, height, width, frames=frames)
    seven = estimate_dynamic_forward(preset, 0.7, height, width, frames=frames)
    assert 0.5 < half.gated_flops / half.flops < 1.0
    assert 1.0 < seven.ratio < half.ratio < 2.0


def test_estimate_command_prices_the_flops_target(capsys):
    import json

    from blockskip.cli import main

    assert main(["estimate", "--model", "qwen-image", "--dynamic-target", "0.7,0.5", "--resolution", "512", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["target"] for row in rows] == [0.7, 0.5] and 1 < rows[0]["ratio"] < rows[1]["ratio"] < 2
    assert main(["estimate", "--model", "qwen-image", "--dynamic-target", "0.5", "--resolution", "512"]) == 0
    assert "estimated" in capsys.readouterr().out
    assert main(["estimate", "--model", "qwen-image", "--dynamic-target", "0.5", "--ralu", "4x"]) != 0
    assert "does not combine" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["estimate", "--model", "qwen-image", "--dynamic-target", "0"])
    assert "not a share in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["FluxTransformer2DModel", "SD3Transformer2DModel", "WanTransformer3DModel"])
def test_timestep_routers_read_t_alone_on_the_0_to_1000_scale(family):
    from blockskip.dynamic.model_call import timestep_features

    case = build_tiny(family)
    stock = run(case)
    handle = apply_dynamic_width(case.model, DynamicSettings(router_input="timestep", timestep_width=16))
    assert torch.allclose(run(case), stock, atol=1e-5)  # routers start open
    with torch.no_grad():
        for routers in handle.routers.values():
            routers.heads.weight.normal_(generator=torch.Generator().manual_seed(4))
            routers.heads.bias.zero_()
    inputs = case.inputs(seed=0, batch=2)
    other_prompt = {key: (value + 1.0 if key in ("encoder_hidden_states", "pooled_projections") else value) for key, value in inputs.items()}
    masks = []
    for kwargs in (inputs, other_prompt):
        run_with(case, kwargs)
        masks.append(torch.stack([call.heads for call in handle.calls.values()]))
    assert torch.equal(masks[0], masks[1]) and 0 < masks[0].mean() < 1  # the prompt does not move the masks
    scale = 1000.0 if family == "FluxTransformer2DModel" else 1.0
    assert torch.allclose(handle.model_call.features, timestep_features(inputs["timestep"].float() * scale, 16))
    later = dict(inputs, timestep=inputs["timestep"].flip(0))
    run_with(case, later)
    assert torch.equal(torch.stack([call.heads for call in handle.calls.values()]), masks[0].flip(1))  # per sample, by t
    handle.remove()
    assert torch.equal(run(case), stock)
    with pytest.raises(DynamicSettingsError, match="router_input"):
        DynamicSettings(router_input="prompt")


def test_grouped_query_heads_open_and_close_with_their_key_value_head():
    case = build_tiny("Lumina2Transformer2DModel", num_attention_heads=4, num_kv_heads=2, hidden_size=64)
    stock = run(case)
    handle = apply_dynamic_width(case.model)
    site = next(iter(handle.sites.values()))
    assert (site.heads, site.head_gates, site.kv_inner) == (4, 2, 32)
    assert torch.allclose(run(case), stock, atol=1e-5)
    with torch.no_grad():
        for routers in handle.routers.values():
            routers.heads.bias.fill_(-50.0)  # the second key/value head, and so query heads 2 and 3, closed
    inputs = case.inputs(batch=1)
    gated = run_with(case, inputs)
    assert handle.calls[next(iter(handle.calls))].heads.tolist() == [[1.0, 0.0]]
    handle.hard = True
    assert torch.allclose(run_with(case, inputs), gated, atol=1e-5)
    handle.remove()


@pytest.mark.parametrize("family", ["FluxTransformer2DModel", "HunyuanVideoTransformer3DModel", "ChromaTransformer2DModel",
                                    "Flux2Transformer2DModel"])
def test_dyflux_single_blocks_drop_a_closed_tokens_whole_update(family):
    from blockskip.families.layouts import block_io_for

    case = build_tiny(family)
    handle = apply_dynamic_tokens(case.model, DynamicSettings(single_block_tokens="block"))
    with torch.no_grad():
        for name, routers in handle.routers.items():
            routers.tokens[2].bias.fill_(-50.0 if "single" in name else 50.0)  # every image token closed in single blocks
    single = [site for site in handle.sites.values() if site.kind != "double"]
    seen = []

    def record(module, args, kwargs, output):  # the image rows going in and coming out of a single block
        site = next(site for site in single if site.block is module)
        before = kwargs.get("hidden_states", args[0] if args else None)
        after = output[block_io_for(module).returns.index("image")] if isinstance(output, tuple) else output
        if site.text_arg is None:  # the joint sequence, text first
            before, after = (site.image_rows(rows, handle.model_call.text_tokens) for rows in (before, after))
        seen.append(torch.allclose(before, after, atol=1e-6))

    hooks = [site.block.register_forward_hook(record, with_kwargs=True) for site in single]
    inputs = case.inputs(batch=1)
    gated = run_with(case, inputs)
    for hook in hooks:
        hook.remove()
    assert seen and all(seen)  # image rows leave each single block as they came in: residual only
    handle.hard = True
    assert torch.allclose(run_with(case, inputs), gated, atol=1e-5)
    handle.remove()
    with pytest.raises(DynamicSettingsError, match="single_block_tokens"):
        DynamicSettings(single_block_tokens="attention")
