"""An offline Qwen-style tokenizer for tiny checkpoints (no download).

A byte-level BPE trained with `tokenizers` on a small built-in corpus (framethink's prompt templates
plus English/QA text with options, colours, shapes, digits and letters), using Qwen2's own
pre-tokenizer, normaliser and decoder (the pipeline transformers' `Qwen2Tokenizer` builds), so it
behaves like the real one on any text. Qwen's special tokens follow the BPE vocabulary in Qwen's
order, eos/pad are those of Qwen2.5-VL-Instruct and the chat template is the Qwen2-VL one.

`<think>`, `</think>`, `<answer>`, `</answer>` are added as ordinary (non-special) tokens: each is
one id, so a tiny model learns the format quickly, and they are never dropped by
`skip_special_tokens`, so rewards always see them. The real Qwen tokenizer splits each of them into
several pieces; nothing in framethink relies on them being single tokens.
"""
from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from framethink.data.prompts import get_template, sft_system
from framethink.errors import ConfigError

# Qwen2-VL / Qwen2.5-VL-Instruct's chat template, verbatim (their chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL's special tokens in Qwen's id order (151643 ... 151656 in the real vocabulary).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
PROMPT_TEMPLATES = ("video-r1", "video-r1-eval", "tinyllava-r1", "option")  # in templates/prompts.yaml

_COLOURS = "red green blue yellow orange purple pink brown black white grey gray cyan magenta"
_SHAPES = "square circle triangle rectangle star diamond line dot ball box cube"
# English/QA text around the prompt templates: options, colours, shapes, digits, letters, reasoning.
_QA_CORPUS = (
    "You are a helpful assistant.",
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: ASSISTANT:",  # TinyLLaVA's qwen2_base (docs/models.md)
    "Question: What colour is the square in the video? Options:\nA. red\nB. green\nC. blue\nD. yellow\n",
    "Question: Which colour does the square show first? Which colour does it show last? Options:\n"
    "A. orange\nB. purple\nC. pink\nD. white\nE. black\n",
    "In which direction does the circle move? Options:\nA. left\nB. right\nC. up\nD. down\n",
    "How many objects are in the image? How many times does the ball bounce? What is the number?",
    "<think>Let me think. The video starts with a red square, then the square turns blue. Wait, let me check "
    "the first frame again. Hmm, the first frame is red and the last frame is blue. Oh, I see.</think> "
    "<answer>A</answer>",
    "<think>Let's break it down. The circle moves from the left to the right of the frame. So the answer is B."
    "</think>\n<answer>B</answer>",
    "<think>I count the objects: one, two, three, four. The total is 4.</think> <answer>4</answer>",
    "The colour changes from green to yellow in the middle of the clip, at the start, at the end, before, after.",
    "first last start end begin middle before after earlier later frame frames video clip image picture scene "
    "object objects colour color shape size left right up down top bottom moves moving motion direction speed "
    "fast slow count number answer option question reasoning think wait yes no true false correct wrong",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "0 1 2 3 4 5 6 7 8 9 10 12 16 20 25 30 42 50 64 100 3.14 0.5 1.0 2.0",
    f"{_COLOURS} {_COLOURS.title()}",
    f"{_SHAPES} {_SHAPES.title()}",
    f"The {' square, the '.join(_COLOURS.split())} square. The {' is small, the '.join(_SHAPES.split())} is small.",
)


def default_corpus() -> list[str]:
    """The built-in training text: every prompt template (from the template data) plus `_QA_CORPUS`."""
    texts = [sft_system()]
    for name in PROMPT_TEMPLATES:
        template = get_template(name)
        texts.append(template.choices.format(problem="", options="") + template.prompt.format(Question=""))
        texts.extend(suffix for suffix in template.suffix.values() if suffix)
    return texts + list(_QA_CORPUS)


def build_offline_tokenizer(
    corpus: list[str] | None = None,
    vocab_size: int = 768,
    *,
    tokenizer_class: type[PreTrainedTokenizerFast] = Qwen2Tokenizer,
    pretokenize_regex: str = PRETOKENIZE_REGEX,
    chat_template: str = QWEN2_VL_CHAT_TEMPLATE,
    added_tokens: tuple[str, ...] = (),
) -> PreTrainedTokenizerFast:
    """Train a Qwen-style byte-level BPE on `corpus` (default: `default_corpus()`) and wrap it as
    transformers' `tokenizer_class` (default `Qwen2Tokenizer`, with its pre-tokenizer `pretokenize_regex`).

    `vocab_size` counts the BPE tokens (256 bytes + merges); Qwen's 14 special tokens, the 4 reasoning tags
    and `added_tokens` (ordinary tokens a family adds, e.g. Qwen3's tool-call tokens) follow them, so
    `len(tokenizer) == vocab_size + 18 + len(added_tokens)` (a tag listed again is not added twice).
    Training is deterministic. Raises ConfigError if the corpus is too small to reach `vocab_size`.
    """
    texts = default_corpus() if corpus is None else list(corpus)
    bpe = Tokenizer(models.BPE())  # the pipeline transformers' Qwen2Tokenizer builds
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenize_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    vocab = bpe.get_vocab()
    if len(vocab) != vocab_size:
        raise ConfigError(
            f"tokenizer corpus ({len(texts)} texts) yields only {len(vocab)} BPE tokens, "
            f"fewer than vocab_size={vocab_size}"
        )
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]  # [(left, right)] in rank order

    # eos/pad are set after the special tokens are added so that the ids follow Qwen's order.
    tokenizer = tokenizer_class(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=None,
        pad_token=None,
        chat_template=chat_template,
        model_max_length=32768,
    )
    specials = [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]
    tokenizer.add_tokens(specials, special_tokens=True)
    ordinary = list(dict.fromkeys(REASONING_TAGS + tuple(added_tokens)))
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ordinary])
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"  # as Qwen2.5-VL-Instruct
    return tokenizer
