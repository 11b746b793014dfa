"""TinyLLaVA-Video model, connectors, checkpoint layouts and SigLIP frames (docs/models.md)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, SiglipImageProcessor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from framethink.errors import ConfigError
from framethink.models.tinyllava.inputs import preprocess_siglip_frames
from framethink.models.tinyllava.modeling import (
    CONNECTOR_TYPES,
    CONNECTORS,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TINYLLAVA_SYSTEM,
    FeedForward,
    PerceiverAttention,
    TinyLlavaVideoConfig,
    TinyLlavaVideoForConditionalGeneration,
    build_tinyllava_prompt_ids,
    sinusoidal_position_encoding,
)
from framethink.models.tinyllava.convert import (
    CheckpointError,
    build_tiny_tinyllava,
    checkpoint_layout,
    convert_released_checkpoint,
    framethink_to_released_key,
    load_tinyllava,
    released_to_framethink_key,
)

FRAMES = 4  # tiny videos: 4 frames of 56x56 -> 4 x 15 SigLIP tokens -> 4 groups of 2 latents


def _toy_config(connector_type: str = "groupresampler", **overrides) -> TinyLlavaVideoConfig:
    """Connector-sized toy config: vision width 6, LM width 8, 2 heads of 4."""
    fields = dict(
        vision_config={"hidden_size": 6, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 12},
        text_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 16},
        connector_type=connector_type,
        group=3,
        num_queries=6,
        num_resampler_layers=2,
        resampler_heads=2,
        resampler_head_dim=4,
    )
    return TinyLlavaVideoConfig(**{**fields, **overrides})


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (LayerNorms included) so no parameter is a silent identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """The same seed in both layouts, for both connectors."""
    root = tmp_path_factory.mktemp("tinyllava")
    return {
        (layout, ct): build_tiny_tinyllava(root / f"{layout}-{ct}", seed=3, layout=layout, connector_type=ct)
        for layout in ("framethink", "released")
        for ct in CONNECTOR_TYPES
    }


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    model, tokenizer = load_tinyllava(tiny_dirs[("framethink", "groupresampler")])
    return model, tokenizer


def _video(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 3, 56, 56, generator=torch.Generator().manual_seed(seed))  # [B, T, 3, H, W]


# ---------------------------------------------------------------- SigLIP frames


@pytest.mark.parametrize("height,width,size", [(90, 160, 56), (40, 30, 56), (56, 56, 56), (120, 200, 384)])
def test_siglip_frames_bit_exact_with_transformers(height, width, size):
    frames = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    ours = preprocess_siglip_frames(frames, size=size)
    reference = SiglipImageProcessor(size={"height": size, "width": size})(list(frames), return_tensors="pt")
    assert ours.shape == (2, 3, size, size) and ours.dtype == torch.float32
    assert torch.equal(ours, reference["pixel_values"])
    # The reference code ran transformers 4.x's PIL processor: PIL's bicubic rounds differently, by at most
    # 1 grey level when shrinking and 2 when enlarging random noise (the worst case) -> 2/127.5 after normalising.
    pil = SiglipImageProcessorPil(size={"height": size, "width": size})(list(frames), return_tensors="pt")
    assert (ours - pil["pixel_values"]).abs().max().item() <= 2 / 127.5 + 1e-5


def test_siglip_frames_values_by_hand():
    frames = np.zeros((1, 56, 56, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 0, 255, 51  # no resize at 56: (x - 127.5) / 127.5
    out = preprocess_siglip_frames(frames, size=56)
    assert torch.equal(out[0, :, 0, 0], torch.tensor([-1.0, 1.0, (51 - 127.5) / 127.5]))


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)]
)
def test_siglip_frames_reject_bad_input(bad):
    with pytest.raises(ValueError, match="SigLIP frames"):
        preprocess_siglip_frames(bad, size=56)


# ---------------------------------------------------------------- connector maths


def test_sinusoidal_position_encoding_by_hand():
    pe = sinusoidal_position_encoding(5, 6)
    assert pe.dtype == torch.float16 and pe.shape == (5, 6)
    for pos, channel in [(0, 0), (0, 1), (1, 0), (1, 1), (3, 2), (4, 5)]:
        freq = 10000 ** (-(channel - channel % 2) / 6)
        value = math.sin(pos * freq) if channel % 2 == 0 else math.cos(pos * freq)
        assert pe[pos, channel].item() == torch.tensor(value, dtype=torch.float16).item()


def test_perceiver_attention_matches_direct_computation():
    dim, heads, head_dim = 8, 2, 4
    attn = PerceiverAttention(dim, heads, head_dim)
    _randomise(attn, 0)
    gen = torch.Generator().manual_seed(1)
    x, latents = torch.randn(2, 5, dim, generator=gen), torch.randn(2, 3, dim, generator=gen)

    xn, ln = _layer_norm(x, attn.norm_media), _layer_norm(latents, attn.norm_latents)
    q = ln @ attn.to_q.weight.T  # [B, 3, h*d]
    kv = torch.cat([xn, ln], dim=1) @ attn.to_kv.weight.T  # keys/values over media AND latents: [B, 8, 2*h*d]
    k, v = kv[..., : heads * head_dim], kv[..., heads * head_dim :]
    q, k, v = (t.reshape(2, -1, heads, head_dim) for t in (q, k, v))  # [B, n, h, d]
    weights = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(head_dim), dim=-1)  # [B, h, 3, 8]
    expected = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(2, 3, heads * head_dim) @ attn.to_out.weight.T

    assert weights.shape[-1] == 5 + 3
    torch.testing.assert_close(attn(x, latents), expected, rtol=1e-5, atol=1e-6)


def test_feed_forward_by_hand():
    ff = FeedForward(4)
    _randomise(ff, 2)
    assert ff.fc1.bias is None and ff.fc2.bias is None and ff.fc1.weight.shape == (16, 4)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    h = _layer_norm(x, ff.norm) @ ff.fc1.weight.T
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    torch.testing.assert_close(ff(x), h @ ff.fc2.weight.T, rtol=1e-5, atol=1e-6)


def _read_by_hand(resampler, media: torch.Tensor) -> torch.Tensor:
    latents = resampler.latents.expand(media.shape[0], -1, -1)
    for block in resampler.blocks:
        latents = block.attn(media, latents) + latents
        latents = block.ff(latents) + latents
    return resampler.norm(latents)


def test_group_resampler_wiring():
    config = _toy_config()  # group 3, 2 latents per group
    resampler = CONNECTORS["groupresampler"](config)
    _randomise(resampler, 4)
    x = torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(5))  # 10 tokens -> chunks of 4, 3, 3
    out = resampler(x)
    assert out.shape == (2, 6, 8)

    h = resampler.linear(x)
    chunks = [h[:, :4], h[:, 4:7], h[:, 7:]]
    expected = torch.cat([_read_by_hand(resampler, c) for c in chunks], dim=1)
    expected = expected + sinusoidal_position_encoding(6, 8).float()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    # Each group of latents reads only its own chunk: changing the last chunk moves only the last 2 outputs.
    moved = resampler(torch.cat([x[:, :7], x[:, 7:] + 1.0], dim=1))
    assert torch.equal(moved[:, :4], out[:, :4]) and not torch.allclose(moved[:, 4:], out[:, 4:])


def test_naive_resampler_wiring():
    config = _toy_config("naiveresampler")
    resampler = CONNECTORS["naiveresampler"](config)
    _randomise(resampler, 6)
    assert resampler.latents.shape == (6, 8)
    x = torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(7))
    expected = _read_by_hand(resampler, resampler.linear(x) + sinusoidal_position_encoding(10, 8).float())
    torch.testing.assert_close(resampler(x), expected, rtol=1e-5, atol=1e-6)


def _resampler_params(vision: int, dim: int, latents: int, layers: int, inner: int) -> int:
    block = 2 * 2 * dim + dim * inner + dim * 2 * inner + inner * dim + 2 * dim + 2 * dim * 4 * dim
    return vision * dim + dim + latents * dim + layers * block + 2 * dim


@pytest.mark.parametrize("connector_type,latents", [("groupresampler", 32), ("naiveresampler", 512)])
def test_connector_shapes_at_real_width(connector_type, latents):
    # Real widths (16 frames x 728 tokens of 1152 -> 512 of 2048) on the meta device: shapes without the
    # ~100 GFLOP of a CPU forward. The maths is checked at toy size above.
    config = TinyLlavaVideoConfig(connector_type=connector_type)
    with torch.device("meta"):
        connector = CONNECTORS[connector_type](config)
        out = connector(torch.empty(1, 16 * 728, 1152))
    assert out.shape == (1, 512, 2048)
    assert connector.latents.shape == (latents, 2048)
    assert sum(p.numel() for p in connector.parameters()) == _resampler_params(1152, 2048, latents, 3, 8 * 64)


def test_full_size_model_on_meta():
    with torch.device("meta"):
        model = TinyLlavaVideoForConditionalGeneration(TinyLlavaVideoConfig())
        video = model.get_video_features(torch.empty(1, 16, 3, 384, 384))
    assert video.shape == (1, 512, 2048)
    assert 3.6e9 < sum(p.numel() for p in model.parameters()) < 3.7e9  # "approximately 3.6B parameters"


def test_config_rejects_bad_connector_settings():
    with pytest.raises(ConfigError, match="connector_type"):
        TinyLlavaVideoConfig(connector_type="mlp2x_gelu")
    with pytest.raises(ConfigError, match="multiple of group"):
        TinyLlavaVideoConfig(num_queries=500, group=16)


# ---------------------------------------------------------------- placeholder expansion and forward


def test_placeholder_expansion(tiny):
    model, tokenizer = tiny
    n = model.config.num_queries
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7, 8], [9, IMAGE_TOKEN_INDEX, 10, 11, 12]])
    labels = torch.tensor([[-100, -100, -100, 7, 8], [-100, -100, 10, 11, 12]])
    video = _video(0, batch=2)
    with torch.no_grad():
        embeds, mask, expanded_labels = model.embed_inputs(ids, None, video, labels)
        features = model.get_video_features(video)
        table = model.get_input_embeddings().weight
    assert embeds.shape == (2, 5 + n - 1, 64) and mask.shape == (2, 12) and mask.all()
    for row, p in enumerate([2, 1]):
        assert torch.equal(embeds[row, p : p + n], features[row])
        text = [t for t in ids[row].tolist() if t != IMAGE_TOKEN_INDEX]
        assert torch.equal(torch.cat([embeds[row, :p], embeds[row, p + n :]]), table[text])
        assert expanded_labels[row, p : p + n].eq(IGNORE_INDEX).all()
        assert expanded_labels[row, p + n :].tolist() == labels[row, p + 1 :].tolist()


def test_video_features_from_layer_minus_2_without_first_patch(tiny):
    model, _ = tiny
    video = _video(9)
    with torch.no_grad():
        hidden = model.vision_tower(video[0], output_hidden_states=True).hidden_states  # embeddings + 2 layers
        assert len(hidden) == 3 and hidden[-2].shape == (FRAMES, 16, 32)
        expected = model.connector(hidden[-2][:, 1:].reshape(1, FRAMES * 15, 32))  # frames in order, 15 patches each
        assert torch.equal(model.get_video_features(video), expected)


def test_video_changes_only_the_logits_after_it(tiny):
    model, _ = tiny
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7, 8]])
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values_videos=_video(1)).logits
        b = model(input_ids=ids, pixel_values_videos=_video(2)).logits
        flat = model(input_ids=ids, pixel_values_videos=_video(1)[0]).logits  # [B*T, 3, H, W] form
    assert a.shape == (1, 5 + 8 - 1, model.config.text_config.vocab_size)
    assert torch.equal(a[:, :2], b[:, :2])  # causal: tokens before the video do not see it
    assert not torch.allclose(a[:, 2:], b[:, 2:])
    assert torch.equal(a, flat)


def test_padding_and_completion_log_probs(tiny):
    model, tokenizer = tiny
    prompt = build_tinyllava_prompt_ids(tokenizer, "Which colour comes first?")
    completion = torch.tensor(tokenizer("<think> red </think> <answer>A</answer>", add_special_tokens=False).input_ids)
    row = torch.cat([prompt, completion])[None]  # [1, L]
    pad = 3
    pads, ones = torch.full((1, pad), tokenizer.pad_token_id), torch.ones_like(row)
    batch = torch.cat([torch.cat([pads, row], 1), torch.cat([row, pads], 1)])  # left-padded row, right-padded row
    mask = torch.cat([torch.cat([0 * pads, ones], 1), torch.cat([ones, 0 * pads], 1)])
    video = _video(3)
    lc = completion.numel()
    seen = {}
    hook = model.language_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    with torch.no_grad():
        both = model(input_ids=batch, attention_mask=mask, pixel_values_videos=torch.cat([video, video])).logits
    hook.remove()
    expanded = row.shape[1] + model.config.num_queries - 1
    # Positions count the attended tokens: 0 over the left padding, then 0, 1, 2, ... (as the reference re-pads).
    assert seen["position_ids"][0].tolist() == [0] * pad + list(range(expanded))
    assert seen["position_ids"][1].tolist() == list(range(expanded)) + [expanded - 1] * pad
    with torch.no_grad():
        alone = model(input_ids=row, pixel_values_videos=video).logits
        kept = model(input_ids=row, pixel_values_videos=video, logits_to_keep=lc + 1).logits
        labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), completion])[None]
        loss = model(input_ids=row, pixel_values_videos=video, labels=labels).loss
    torch.testing.assert_close(both[0, pad:], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1, :-pad], alone[0], rtol=1e-4, atol=1e-5)
    # The completion's log-probs sit in the last L_c + 1 logits, as for a text-only model.
    torch.testing.assert_close(kept, alone[:, -lc - 1 :])
    logprobs = torch.log_softmax(alone[:, -lc - 1 : -1], dim=-1).gather(-1, completion[None, :, None])
    torch.testing.assert_close(loss, -logprobs.mean(), rtol=1e-5, atol=1e-6)


def test_loss_trains_connector_and_language_model(tiny_dirs):
    model, _ = load_tinyllava(tiny_dirs[("framethink", "naiveresampler")])
    model.train()
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6, 7, 8]])
    model(input_ids=ids, pixel_values_videos=_video(10), labels=ids.masked_fill(ids < 0, IGNORE_INDEX)).loss.backward()
    assert model.connector.latents.grad.abs().sum() > 0 and model.connector.linear.weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_forward_rejects_bad_placeholders(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="row 1 of input_ids holds 2 video placeholders"):
        ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 2], [IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX, 2]])
        model(input_ids=ids, pixel_values_videos=_video(0, 2))
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        model(input_ids=torch.tensor([[1, IMAGE_TOKEN_INDEX, 2]]))
    with pytest.raises(ValueError, match="7 frames for 2 videos"):
        ids = torch.tensor([[1, IMAGE_TOKEN_INDEX], [IMAGE_TOKEN_INDEX, 2]])
        model(input_ids=ids, pixel_values_videos=torch.zeros(7, 3, 56, 56))


def test_generate_continues_the_video_prompt(tiny):
    model, tokenizer = tiny
    questions = ("What colour is the square?", "Which way does it move?")
    prompts = [build_tinyllava_prompt_ids(tokenizer, q) for q in questions]
    width = max(len(p) for p in prompts)
    ids = torch.stack([F.pad(p, (width - len(p), 0), value=tokenizer.pad_token_id) for p in prompts])  # left padding
    mask = torch.stack([F.pad(torch.ones_like(p), (width - len(p), 0)) for p in prompts])
    video = torch.cat([_video(4), _video(5)])
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": video}
    new = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 6
    assert ((new >= 0) & (new < model.config.text_config.vocab_size)).all()
    # Greedy tokens are the argmax of a plain forward over prompt + generated tokens (cache and positions agree).
    full_ids = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask, pixel_values_videos=video).logits
    steps = new.shape[1]
    for row in range(2):
        stop = (new[row] == tokenizer.eos_token_id).nonzero()
        upto = stop[0, 0].item() + 1 if stop.numel() else steps
        assert logits[row, -steps - 1 : -1][:upto].argmax(-1).tolist() == new[row, :upto].tolist()
    sampled = model.generate(**inputs, max_new_tokens=4, do_sample=True, num_return_sequences=3)
    assert sampled.shape[0] == 6


def test_prompt_ids(tiny):
    _, tokenizer = tiny
    ids = build_tinyllava_prompt_ids(tokenizer, "How many balls?")
    assert ids.dtype == torch.long and ids.eq(IMAGE_TOKEN_INDEX).sum() == 1
    p = ids.tolist().index(IMAGE_TOKEN_INDEX)
    assert tokenizer.decode(ids[:p]) == TINYLLAVA_SYSTEM + "USER: "
    assert tokenizer.decode(ids[p + 1 :]) == "\nHow many balls? ASSISTANT:"
    # A question that already holds the placeholder (LLaVA conversations) gives the same ids.
    assert torch.equal(build_tinyllava_prompt_ids(tokenizer, "<image>\nHow many balls? "), ids)


# ---------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tiny, tmp_path):
    model, _ = tiny
    model.save_pretrained(tmp_path)
    ids = torch.tensor([[5, IMAGE_TOKEN_INDEX, 6, 7]])
    video = _video(6)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values_videos=video).logits
        for loaded in (
            TinyLlavaVideoForConditionalGeneration.from_pretrained(tmp_path),
            AutoModelForCausalLM.from_pretrained(tmp_path),
        ):
            assert isinstance(loaded, TinyLlavaVideoForConditionalGeneration)
            assert torch.equal(loaded.eval()(input_ids=ids, pixel_values_videos=video).logits, expected)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, TinyLlavaVideoConfig)
    assert (config.connector_type, config.group, config.num_queries) == ("groupresampler", 4, 8)
    assert (config.num_resampler_layers, config.vision_feature_layer, config.drop_first_patch) == (2, -2, True)
    assert config.image_token_index == IMAGE_TOKEN_INDEX
    assert config.vision_config.hidden_size == 32 and config.text_config.tie_word_embeddings


@pytest.mark.parametrize("connector_type", CONNECTOR_TYPES)
def test_released_layout_loads_to_identical_logits(tiny_dirs, connector_type):
    released = tiny_dirs[("released", connector_type)]
    raw = json.loads((released / "config.json").read_text())
    assert raw["model_type"] == "tinyllava" and "auto_map" not in raw
    assert raw["text_config"]["model_type"] == "qwen2" and raw["text_config"]["rope_theta"] == 1e6
    keys = set(load_file(released / "model.safetensors"))
    # Names from the reference's module nesting (vision_tower._vision_tower = SiglipVisionModel,
    # connector._connector = PerceiverResampler with layers = [[PerceiverAttention, FeedForward Sequential]]).
    assert {
        "vision_tower._vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower._vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight",
        "connector._connector.latents",
        "connector._connector.linear.weight",
        "connector._connector.layers.1.0.to_kv.weight",
        "connector._connector.layers.1.0.norm_media.bias",
        "connector._connector.layers.1.1.0.weight",
        "connector._connector.layers.1.1.1.weight",
        "connector._connector.layers.1.1.3.weight",
        "connector._connector.norm.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.1.mlp.down_proj.weight",
    } <= keys
    assert "language_model.lm_head.weight" not in keys  # tied to the embeddings
    assert checkpoint_layout(released) == "released"

    ours, _ = load_tinyllava(tiny_dirs[("framethink", connector_type)])
    theirs, tokenizer = load_tinyllava(released)
    assert theirs.config.connector_type == connector_type
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    ids = build_tinyllava_prompt_ids(tokenizer, "What happens?")[None]
    with torch.no_grad():
        assert torch.equal(
            theirs(input_ids=ids, pixel_values_videos=_video(7)).logits,
            ours(input_ids=ids, pixel_values_videos=_video(7)).logits,
        )


def test_convert_released_checkpoint(tiny_dirs, tmp_path):
    converted = convert_released_checkpoint(tiny_dirs[("released", "groupresampler")], tmp_path / "converted")
    assert checkpoint_layout(converted) == "framethink"
    model, tokenizer = load_tinyllava(converted)
    reference, _ = load_tinyllava(tiny_dirs[("framethink", "groupresampler")])
    ids = build_tinyllava_prompt_ids(tokenizer, "Why?")[None]
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values_videos=_video(8)).logits
        assert torch.equal(model(input_ids=ids, pixel_values_videos=_video(8)).logits, expected)
    with pytest.raises(CheckpointError, match="not a released"):
        convert_released_checkpoint(converted, tmp_path / "again")


def test_key_mapping():
    pairs = {
        "connector._connector.layers.2.1.3.weight": "connector.blocks.2.ff.fc2.weight",
        "connector._connector.layers.0.0.to_q.weight": "connector.blocks.0.attn.to_q.weight",
        "connector._connector.latents": "connector.latents",
        "language_model.lm_head.weight": "language_model.lm_head.weight",
        "vision_tower._vision_tower.vision_model.head.probe": "vision_tower.vision_model.head.probe",
        "mm_projector.0.weight": None,
    }
    assert {key: released_to_framethink_key(key) for key in pairs} == pairs
    released = "vision_tower._vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert framethink_to_released_key("vision_tower.encoder.layers.0.mlp.fc1.weight") == released  # flat SigLIP names
    assert framethink_to_released_key("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == released
    assert framethink_to_released_key("connector.blocks.3.ff.norm.bias") == "connector._connector.layers.3.1.0.bias"


def _copy_released(tiny_dirs, tmp_path, edit_weights=None, edit_config=None):
    src = tiny_dirs[("released", "groupresampler")]
    dst = tmp_path / "edited"
    dst.mkdir(parents=True)
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    if edit_weights:
        weights = load_file(dst / "model.safetensors")
        edit_weights(weights)
        save_file(weights, dst / "model.safetensors")
    if edit_config:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_released_loading_names_unknown_and_missing_weights(tiny_dirs, tmp_path):
    extra = _copy_released(
        tiny_dirs, tmp_path / "a", edit_weights=lambda w: w.update({"mm_projector.0.weight": torch.zeros(2)})
    )
    with pytest.raises(CheckpointError, match=r"outside the released .*mm_projector\.0\.weight"):
        load_tinyllava(extra)
    missing = _copy_released(
        tiny_dirs, tmp_path / "b", edit_weights=lambda w: w.pop("connector._connector.layers.1.0.to_q.weight")
    )
    with pytest.raises(CheckpointError, match=r"missing: \['connector\.blocks\.1\.attn\.to_q\.weight'\]"):
        load_tinyllava(missing)
    reshaped = _copy_released(
        tiny_dirs, tmp_path / "c", edit_weights=lambda w: w.update({"connector._connector.latents": torch.zeros(3, 64)})
    )
    with pytest.raises(CheckpointError, match=r"wrong shape: \['connector\.latents \(3, 64\) != \(2, 64\)'\]"):
        load_tinyllava(reshaped)


def test_released_checkpoint_without_siglip_head(tiny_dirs, tmp_path):
    def drop_head(weights):
        for key in [k for k in weights if ".vision_model.head." in k]:
            weights.pop(key)

    headless = _copy_released(tiny_dirs, tmp_path, edit_weights=drop_head)
    model, tokenizer = load_tinyllava(headless)
    reference, _ = load_tinyllava(tiny_dirs[("released", "groupresampler")])
    assert not model.config.vision_config.vision_use_head and reference.config.vision_config.vision_use_head
    ids = build_tinyllava_prompt_ids(tokenizer, "Why?")[None]
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values_videos=_video(11)).logits
        assert torch.equal(model(input_ids=ids, pixel_values_videos=_video(11)).logits, expected)


def test_released_config_faults_are_named(tiny_dirs, tmp_path):
    no_queries = _copy_released(tiny_dirs, tmp_path / "a", edit_config=lambda c: c.pop("num_queries"))
    with pytest.raises(CheckpointError, match="field 'num_queries' is missing"):
        load_tinyllava(no_queries)
    llama = _copy_released(tiny_dirs, tmp_path / "b", edit_config=lambda c: c["text_config"].update(model_type="llama"))
    with pytest.raises(CheckpointError, match="text_config.model_type"):
        load_tinyllava(llama)
    other = _copy_released(tiny_dirs, tmp_path / "c", edit_config=lambda c: c.update(model_type="llava"))
    with pytest.raises(CheckpointError, match="model_type 'llava'"):
        load_tinyllava(other)
