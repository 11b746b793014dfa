"""What every policy adapter does the same way once it can `generate`: its frame rule, decoding completions to
text, and the evaluation path of one completion per prompt."""
from __future__ import annotations

from framethink.data.clips import FrameRule
from framethink.models.adapter import Decoding, EncodedPrompt
from framethink.models.sampling import Completions, decode_completions


class AdapterCommon:
    """Mixed into each adapter; expects `clips` (a ClipReader), `tokenizer`, `eos_ids` and `generate`."""

    @property
    def frames(self) -> FrameRule:
        return self.clips.rule

    def decode(self, completions: Completions) -> list[str]:
        return decode_completions(self.tokenizer, completions, self.eos_ids)

    def generate_texts(self, prompts: list[EncodedPrompt], decoding: Decoding) -> list[str]:
        """One completion per prompt from one batched call (the evaluation path)."""
        return self.decode(self.generate(prompts, list(range(len(prompts))), decoding))
