"""TinyLLaVA-Video as a transformers model: SigLIP, a Perceiver resampler connector, Qwen2 (docs/models.md).

Frames go through SigLIP; the hidden states of layer `vision_feature_layer` (-2) lose their first
patch (729 -> 728 tokens per 384x384 frame), the frames of a video are concatenated into one
sequence [T*728, 1152] and the connector reads it into `num_queries` (512) embeddings of the LM's
width. The prompt holds one placeholder id `image_token_index` (-200, as the reference) where the
video goes: `forward` replaces it by the connector's embeddings, so callers pass plain token ids.

Expanded sequence: a row of `input_ids` of length L (one placeholder) becomes L + N - 1 positions,
N = `config.num_queries`: the tokens before the placeholder, the N video embeddings, the tokens
after it. Logits, labels and the attention mask are aligned with the expanded sequence. Tokens after
the placeholder keep their distance from the end, so for input_ids ending with L_c completion tokens
the completion's log-probs are `log_softmax(logits[:, -L_c - 1:-1])` gathered at `input_ids[:, -L_c:]`,
exactly as for a text-only model; `logits_to_keep=L_c + 1` computes only those logits.
Left and right padding both work: padding keeps its place and positions count real tokens only.

Weight names (framethink layout): `vision_tower.*` (transformers' SiglipVisionModel),
`connector.{linear, latents, blocks.{i}.attn.*, blocks.{i}.ff.{norm, fc1, fc2}, norm}`,
`language_model.*` (transformers' Qwen2ForCausalLM). `framethink.models.tinyllava_convert` maps the
released TinyLLaVA_Factory layout onto these names. Importing this module registers the config and
model with `AutoConfig` / `AutoModelForCausalLM`, so `save_pretrained` directories load with
`from_pretrained`; `tinyllava_convert.load_tinyllava` loads either layout, also across transformers
versions that name SigLIP's weights differently.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from framethink.errors import ConfigError
from framethink.models.base import CACHE_ARGUMENT

CONNECTOR_TYPES = ("groupresampler", "naiveresampler")
IMAGE_TOKEN_INDEX = -200  # the reference's placeholder id (never a real vocabulary id)
IGNORE_INDEX = -100
FF_MULT = 4  # the resampler's feed-forward width multiplier, fixed in the reference

# The `qwen2_base` conversation template of TinyLLaVA_Factory, as its inference prompt renders it (docs/models.md).
TINYLLAVA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. "
)
VIDEO_PLACEHOLDER = "<image>"

# google/siglip-so400m-patch14-384 (vision part) and Qwen2.5-3B base: the defaults of the config.
SIGLIP_SO400M_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
QWEN25_3B = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}


class TinyLlavaVideoConfig(PretrainedConfig):
    """Configuration of TinyLLaVA-Video (docs/models.md); the defaults describe the released Qwen2.5-3B model.

    Args:
        vision_config: SigLIP vision settings (dict or `SiglipVisionConfig`).
        text_config: Qwen2 settings (dict or `Qwen2Config`).
        connector_type: "groupresampler" (`group` chunks read by num_queries/group shared latents each)
            or "naiveresampler" (num_queries latents read the whole video).
        group: number of contiguous chunks the video tokens are split into (groupresampler).
        num_queries: connector output tokens per video.
        num_resampler_layers, resampler_heads, resampler_head_dim: Perceiver blocks (3, 8 heads of 64).
        vision_feature_layer: SigLIP hidden-state index the features come from (-2).
        drop_first_patch: drop the first patch of every frame, as the reference does (729 -> 728).
        image_token_index: placeholder id in input_ids replaced by the video embeddings (-200).
        pad_token, pad_token_id: the tokenizer's pad token ("<|endoftext|>").
        tokenizer_model_max_length, tokenizer_padding_side: the reference tokenizer settings (data only).
    """

    model_type = "framethink_tinyllava_video"
    sub_configs = {"text_config": Qwen2Config, "vision_config": SiglipVisionConfig}

    def __init__(
        self,
        vision_config: dict | SiglipVisionConfig | None = None,
        text_config: dict | Qwen2Config | None = None,
        connector_type: str = "groupresampler",
        group: int = 16,
        num_queries: int = 512,
        num_resampler_layers: int = 3,
        resampler_heads: int = 8,
        resampler_head_dim: int = 64,
        vision_feature_layer: int = -2,
        drop_first_patch: bool = True,
        image_token_index: int = IMAGE_TOKEN_INDEX,
        pad_token: str | None = "<|endoftext|>",
        pad_token_id: int | None = None,
        tokenizer_model_max_length: int = 3072,
        tokenizer_padding_side: str = "right",
        **kwargs,
    ) -> None:
        if connector_type not in CONNECTOR_TYPES:
            raise ConfigError(f"connector_type {connector_type!r} is unknown; known: {', '.join(CONNECTOR_TYPES)}")
        if connector_type == "groupresampler" and (group < 1 or num_queries % group):
            raise ConfigError(f"groupresampler needs num_queries ({num_queries}) to be a multiple of group ({group})")
        if isinstance(vision_config, dict) or vision_config is None:
            vision_config = SiglipVisionConfig(**(SIGLIP_SO400M_384 if vision_config is None else vision_config))
        if isinstance(text_config, dict) or text_config is None:
            text_config = Qwen2Config(**(QWEN25_3B if text_config is None else text_config))
        self.vision_config = vision_config
        self.text_config = text_config
        self.connector_type = connector_type
        self.group = group
        self.num_queries = num_queries
        self.num_resampler_layers = num_resampler_layers
        self.resampler_heads = resampler_heads
        self.resampler_head_dim = resampler_head_dim
        self.vision_feature_layer = vision_feature_layer
        self.drop_first_patch = drop_first_patch
        self.image_token_index = image_token_index
        self.pad_token = pad_token
        self.pad_token_id = pad_token_id
        self.tokenizer_model_max_length = tokenizer_model_max_length
        self.tokenizer_padding_side = tokenizer_padding_side
        super().__init__(**kwargs)


def sinusoidal_position_encoding(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Transformer sine/cosine positions [length, dim]: sin on even channels, cos on odd ones.

    Returned in float16 because the reference builds it in a float16 tensor: the released weights
    were trained with these rounded values.
    """
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]  # [length, 1]
    inv_freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq)
    return pe.to(torch.float16)


class PerceiverAttention(nn.Module):
    """Latents attend to the media tokens and to themselves: keys/values = concat(media, latents)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media [B, n, D], latents [B, m, D] -> attention output [B, m, D] (no residual)."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)  # [B, m, h*d]
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)  # [B, n+m, h*d] each
        q, k, v = (t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))  # [B, h, *, d]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, [B, h, m, d]
        return self.to_out(out.transpose(1, 2).flatten(2))  # [B, m, D]


class FeedForward(nn.Module):
    """LayerNorm, Linear D -> 4D, GELU, Linear 4D -> D; no biases."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, FF_MULT * dim, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(FF_MULT * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class ResamplerBlock(nn.Module):
    """One Perceiver block: residual attention, then residual feed-forward, on the latents."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.attn(media, latents) + latents
        return self.ff(latents) + latents


class Resampler(nn.Module):
    """Linear vision -> LM width, learned latents read the tokens through Perceiver blocks, final LayerNorm."""

    def __init__(self, config: TinyLlavaVideoConfig, num_latents: int) -> None:
        super().__init__()
        dim = config.text_config.hidden_size
        self.linear = nn.Linear(config.vision_config.hidden_size, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.blocks = nn.ModuleList(
            ResamplerBlock(dim, config.resampler_heads, config.resampler_head_dim)
            for _ in range(config.num_resampler_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def read(self, media: torch.Tensor) -> torch.Tensor:
        """media [B, n, D] -> normalised latents [B, m, D]."""
        latents = self.latents.expand(media.shape[0], -1, -1)  # [B, m, D]
        for block in self.blocks:
            latents = block(media, latents)
        return self.norm(latents)


class GroupResampler(Resampler):
    """`group` contiguous chunks of the video tokens, each read by the same num_queries/group latents;
    outputs concatenated, then sinusoidal positions added (docs/models.md). At 16 frames and group 16 a chunk
    is one frame."""

    def __init__(self, config: TinyLlavaVideoConfig) -> None:
        super().__init__(config, config.num_queries // config.group)
        self.group = config.group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T*P, D_vision] -> [B, num_queries, D]."""
        x = self.linear(x)  # [B, T*P, D]
        n = x.shape[1]
        if n < self.group:
            raise ValueError(f"groupresampler: {n} video tokens cannot be split into {self.group} groups")
        # The first n % group chunks take one token more, as the reference splits.
        sizes = [n // self.group + 1] * (n % self.group) + [n // self.group] * (self.group - n % self.group)
        out = torch.cat([self.read(chunk) for chunk in torch.split(x, sizes, dim=1)], dim=1)  # [B, num_queries, D]
        return out + sinusoidal_position_encoding(out.shape[1], out.shape[2], out.device).to(out.dtype)


class NaiveResampler(Resampler):
    """num_queries latents read all video tokens at once; sinusoidal positions are added to the tokens."""

    def __init__(self, config: TinyLlavaVideoConfig) -> None:
        super().__init__(config, config.num_queries)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T*P, D_vision] -> [B, num_queries, D]."""
        x = self.linear(x)  # [B, T*P, D]
        x = x + sinusoidal_position_encoding(x.shape[1], x.shape[2], x.device).to(x.dtype)
        return self.read(x)


CONNECTORS = {"groupresampler": GroupResampler, "naiveresampler": NaiveResampler}


class TinyLlavaVideoForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """TinyLLaVA-Video (docs/models.md): SigLIP vision tower, resampler connector, Qwen2 causal LM."""

    config_class = TinyLlavaVideoConfig
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer", "GroupResampler", "NaiveResampler"]

    def __init__(self, config: TinyLlavaVideoConfig) -> None:
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.connector = CONNECTORS[config.connector_type](config)
        self.language_model = Qwen2ForCausalLM(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_video_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Videos [B, T, 3, H, W] -> connector embeddings [B, num_queries, D_text] (docs/models.md)."""
        b, t = pixel_values_videos.shape[:2]
        frames = pixel_values_videos.flatten(0, 1).to(self.vision_tower.dtype)  # [B*T, 3, H, W]
        hidden = self.vision_tower(frames, output_hidden_states=True).hidden_states[self.config.vision_feature_layer]
        if self.config.drop_first_patch:
            hidden = hidden[:, 1:]  # [B*T, P, D_vision]
        hidden = hidden.reshape(b, t * hidden.shape[1], hidden.shape[2])  # one token sequence per video
        return self.connector(hidden.to(self.connector.linear.weight.dtype))

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.LongTensor | None]:
        """Token ids with one placeholder per row + videos -> (inputs_embeds [B, L+N-1, D],
        attention_mask [B, L+N-1], labels [B, L+N-1] or None), N = num_queries.

        `pixel_values_videos` is [B, T, 3, H, W] or the frames of all videos stacked, [B*T, 3, H, W].
        The N video positions are attended to and labelled IGNORE_INDEX. Without videos, input_ids
        must hold no placeholder and the lengths are unchanged.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        is_video = input_ids == self.config.image_token_index  # [B, L]
        embed = self.get_input_embeddings()
        if pixel_values_videos is None:
            if is_video.any():
                raise ValueError(
                    f"input_ids hold the video placeholder {self.config.image_token_index} "
                    "but no pixel_values_videos were given"
                )
            return embed(input_ids), attention_mask, labels

        b, length = input_ids.shape
        counts = is_video.sum(-1)  # [B]
        if (bad := (counts != 1).nonzero()).numel():
            row = bad[0, 0].item()
            raise ValueError(
                f"row {row} of input_ids holds {counts[row].item()} video placeholders "
                f"({self.config.image_token_index}); every row needs exactly one"
            )
        if pixel_values_videos.dim() == 4:
            if pixel_values_videos.shape[0] % b:
                raise ValueError(f"pixel_values_videos holds {pixel_values_videos.shape[0]} frames for {b} videos")
            pixel_values_videos = pixel_values_videos.unflatten(0, (b, -1))  # [B, T, 3, H, W]
        elif pixel_values_videos.dim() != 5 or pixel_values_videos.shape[0] != b:
            raise ValueError(
                f"pixel_values_videos must be [B, T, 3, H, W] or [B*T, 3, H, W] for B={b}, "
                f"got {tuple(pixel_values_videos.shape)}"
            )
        video = self.get_video_features(pixel_values_videos)  # [B, N, D]
        n = video.shape[1]
        text = embed(input_ids.masked_fill(is_video, 0))  # [B, L, D]; the placeholder row is never gathered

        # Source index of every expanded position into cat([text (L), video (N)]):
        # text before the placeholder, then the N video slots, then the text after it.
        p = is_video.int().argmax(-1, keepdim=True)  # [B, 1]
        j = torch.arange(length + n - 1, device=input_ids.device)[None]  # [1, L+N-1]
        src = torch.where(j < p, j, torch.where(j < p + n, length + j - p, j - n + 1))  # [B, L+N-1]

        embeds = torch.cat([text, video.to(text.dtype)], dim=1)
        embeds = embeds.gather(1, src[..., None].expand(-1, -1, embeds.shape[-1]))  # [B, L+N-1, D]
        mask = torch.cat([attention_mask, attention_mask.new_ones(b, n)], dim=1).gather(1, src)
        if labels is not None:
            labels = torch.cat([labels, labels.new_full((b, n), IGNORE_INDEX)], dim=1).gather(1, src)
        return embeds, mask, labels

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward over the expanded sequence (see the module docstring).

        Pass `input_ids` [B, L] with one `image_token_index` per row and `pixel_values_videos`
        ([B, T, 3, H, W] or [B*T, 3, H, W]); `attention_mask` and `labels` are [B, L] and are
        expanded with the ids. Or pass `inputs_embeds` and an `attention_mask` already expanded
        (what `generate` does). Positions count the attended tokens of each row when not given. `cache` reaches
        the language model under the name the installed transformers gives it (`cache` or `past_key_values`).
        Returns logits [B, L+N-1, V] (or the last `logits_to_keep`) and the loss when `labels` are given.
        Nothing is truncated: the reference cut expanded sequences at `tokenizer_model_max_length`
        (3072), so callers keep prompt + video + completion within it.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds, attention_mask, labels = self.embed_inputs(
                input_ids, attention_mask, pixel_values_videos, labels
            )
        elif pixel_values_videos is not None:
            raise ValueError("pixel_values_videos need input_ids holding the placeholder, not inputs_embeds")
        if position_ids is None and attention_mask is not None:
            # With a cache the mask covers past + new tokens: keep the positions of the new ones.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1]:]
        if cache is not None:
            kwargs[CACHE_ARGUMENT] = cache
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Sample continuations of left-padded prompts (one placeholder per row) about their videos.

        The prompt is embedded once (video included), then transformers' generation continues from
        those embeddings, as the reference does; the result holds only the new tokens
        [B * num_return_sequences, new] (or a `GenerateOutput` when `return_dict_in_generate=True`).
        `kwargs` are transformers' generation arguments (max_new_tokens, do_sample, temperature, top_p, ...).
        """
        if "inputs_embeds" in kwargs:
            raise ValueError("generate builds inputs_embeds itself; pass input_ids and pixel_values_videos")
        inputs_embeds, attention_mask, _ = self.embed_inputs(input_ids, attention_mask, pixel_values_videos)
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


def tinyllava_prompt(question: str) -> str:
    """The `qwen2_base` inference prompt (docs/models.md) with the `<image>` placeholder.

    As the reference template, a `<image>` already in the question is removed and the question
    stripped: `"{system}USER: <image>\\n{question} ASSISTANT:"`.
    """
    question = question.replace(VIDEO_PLACEHOLDER, "").strip()
    return f"{TINYLLAVA_SYSTEM}USER: {VIDEO_PLACEHOLDER}\n{question} ASSISTANT:"


def build_tinyllava_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, question: str, *, image_token_index: int = IMAGE_TOKEN_INDEX
) -> torch.LongTensor:
    """Token ids [L] of `tinyllava_prompt(question)` with `image_token_index` where `<image>` stands.

    The text on each side of the placeholder is tokenised separately, as the reference does
    (Qwen2's tokenizer adds no special tokens).
    """
    before, after = tinyllava_prompt(question).split(VIDEO_PLACEHOLDER)
    ids = tokenizer(before, add_special_tokens=False).input_ids
    ids += [image_token_index] + tokenizer(after, add_special_tokens=False).input_ids
    return torch.tensor(ids, dtype=torch.long)


AutoConfig.register(TinyLlavaVideoConfig.model_type, TinyLlavaVideoConfig, exist_ok=True)
AutoModelForCausalLM.register(TinyLlavaVideoConfig, TinyLlavaVideoForConditionalGeneration, exist_ok=True)
