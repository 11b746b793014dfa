"""The Qwen3-VL / Qwen3.5 family (model_type qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe): one processor for both.

- `inputs`: the model inputs as transformers' `Qwen3VLProcessor` builds them (frame sampling by fps, the clip-wide
  pixel budget, the timestamp text of every temporal patch, pixels, grids, mm_token_type_ids): `Qwen3VisionProcessor`,
  `VideoClip`, `build_qwen3_inputs`;
- `positions`: interleaved M-RoPE positions with one vision block per temporal patch: `qwen3_position_ids`;
- `tiny`: tiny random checkpoints in the released layout: `build_tiny_qwen3`.
docs/inputs.md describes the rules.
"""
