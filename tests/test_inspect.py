"""`framethink inspect` on every family's tiny checkpoint: the report, the saved tensors (equal to what the adapter
encodes and packs), the frame indices in the order the pixels hold them, and the vision token / feature check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from framethink.cli import main
from framethink.inspect import inspect_inputs
from framethink.models.registry import build_tiny, load_adapter
from helpers_video import decoded_indices, index_frames, write_video

ARCHS = ("qwen2.5-vl", "tinyllava-video", "qwen3-vl", "qwen3.5")
SMALL_QWEN = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vision_hidden_size=32,
                  vision_num_heads=2, vision_intermediate_size=128)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    sizes = SMALL_QWEN if request.param in ("qwen2.5-vl", "qwen2-vl") else {}
    return build_tiny(request.param, tmp_path_factory.mktemp(request.param.replace(".", "")), **sizes)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 30-frame 10 fps clip whose grey level tells each frame's index, and one image."""
    folder = tmp_path_factory.mktemp("media")
    video = write_video(folder / "clip.mp4", index_frames(30, size=64), 10)
    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(image)
    return video, image


def test_cli_prints_and_saves_every_tensor_of_the_forward(tiny, media, tmp_path, capsys):
    video, _ = media
    out = tmp_path / "inputs.safetensors"
    assert main(["inspect", "--model", str(tiny), "--video", str(video), "--frames", "8", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "vision tokens in the prompt" in report and "-> OK" in report and f"wrote {out}" in report

    saved = load_file(out)
    adapter = load_adapter(tiny, num_frames=8)
    from framethink.infer import question_record

    prompt = adapter.encode(question_record(video, "video", "What happens in the video?"),
                            template=adapter.default_template)
    for name, value in prompt.inputs.items():
        assert torch.equal(saved[name], value), name
    indices = prompt.meta["indices"]
    assert saved["frame_indices"].dtype == torch.int64 and saved["frame_indices"].tolist() == indices
    assert len(indices) == (8 if "tinyllava" in str(tiny) else 6)  # 3 s at 2 fps under the cap of 8
    assert f"indices in the video (temporal order): {indices}" in report
    assert saved["sample_fps"].dtype == torch.float64 and float(saved["sample_fps"]) == pytest.approx(prompt.meta["fps"])
    packed = adapter.pack(adapter.model, [prompt], [0])
    if packed.position_ids is not None:  # Qwen-VL: 3-D M-RoPE positions of the LM forward
        assert torch.equal(saved["position_ids"], packed.position_ids)
        assert {"mm_token_type_ids", "pixel_values_videos", "video_grid_thw"} <= set(saved)
    else:  # TinyLLaVA-Video: the model counts positions over the packed sequence
        assert torch.equal(saved["position_ids"], torch.arange(packed.inputs_embeds.shape[1])[None])


def test_shuffled_frames_are_saved_in_the_order_the_pixels_hold_them(tiny, media):
    video, _ = media
    ordered = inspect_inputs(tiny, video=video, frames=8)
    shuffled = inspect_inputs(tiny, video=video, frames=8, frame_order="shuffled", seed=4)
    perm = shuffled.prompt.meta["permutation"]
    assert shuffled.tensors["frame_indices"].tolist() == [ordered.tensors["frame_indices"].tolist()[k] for k in perm]
    assert torch.equal(shuffled.tensors["input_ids"], ordered.tensors["input_ids"])
    assert torch.equal(shuffled.tensors["position_ids"], ordered.tensors["position_ids"])
    frames = shuffled.prompt.inputs.get("pixel_values_videos")
    assert not torch.equal(frames, ordered.prompt.inputs["pixel_values_videos"])
    assert "frame order shuffled" in shuffled.report
    # the decoded grey levels confirm the saved indices are the frames behind the pixels
    clip = load_adapter(tiny, num_frames=8).clips.read(shuffled.record, "shuffled", 4)
    assert decoded_indices(clip.frames).tolist() == shuffled.tensors["frame_indices"].tolist()


def test_image_and_settings_a_family_does_not_read(tiny, media, capsys):
    _, image = media
    inspection = inspect_inputs(tiny, image=image, question="Which colour?")
    assert inspection.tensors["frame_indices"].tolist() == [0] and float(inspection.tensors["sample_fps"]) == 0.0
    assert "Which colour?" in inspection.report
    if "tinyllava" in str(tiny):
        assert main(["inspect", "--model", str(tiny), "--image", str(image), "--max-pixels", "1000"]) == 2
        assert main(["inspect", "--model", str(tiny), "--video", str(media[0]), "--fps", "1"]) == 2
        assert "not by fps" in capsys.readouterr().err
    else:
        assert "image frames resized to" in inspection.report


def test_fps_sets_the_sampling_rate(tiny, media):
    if "tinyllava" in str(tiny):
        pytest.skip("TinyLLaVA-Video samples a fixed number of frames")
    inspection = inspect_inputs(tiny, video=media[0], fps=1.0)
    # 3 s at 1 fps: qwen-vl-utils' rule takes its minimum of 4 frames over 0 .. 29
    assert inspection.tensors["frame_indices"].tolist() == [0, 10, 19, 29]


def test_token_feature_mismatch_is_reported(tiny, media, monkeypatch, tmp_path):
    if "tinyllava" in str(tiny):
        pytest.skip("the mismatch concerns expanded vision tokens")
    adapter_class = type(load_adapter(tiny))
    encode = adapter_class.encode

    def one_token_short(self, record, **kwargs):  # what a prompt expanded with other pixel bounds looks like
        prompt = encode(self, record, **kwargs)
        keep = torch.ones(prompt.inputs["input_ids"].shape[1], dtype=torch.bool)
        keep[int((prompt.inputs["mm_token_type_ids"][0] == 2).nonzero()[0])] = False
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            prompt.inputs[key] = prompt.inputs[key][:, keep]
        return prompt

    monkeypatch.setattr(adapter_class, "encode", one_token_short)
    out = tmp_path / "bad.safetensors"
    assert main(["inspect", "--model", str(tiny), "--video", str(media[0]), "--out", str(out)]) == 1
    inspection = inspect_inputs(tiny, video=media[0])
    assert inspection.vision_tokens == inspection.vision_features - 1 and "MISMATCH" in inspection.report
    assert out.is_file()


def test_qwen3_report_shows_each_timestamped_block(tiny, media):
    if "qwen3" not in str(tiny):
        pytest.skip("the timestamp text is Qwen3's")
    inspection = inspect_inputs(tiny, video=media[0], frames=8)  # frames 0, 6, 12, 17, 23, 29 at 10 fps
    report = inspection.report
    assert "<0.3 seconds><|vision_start|>[video block 1/3: frames [0, 6] (at 0.00, 0.60 s)" in report
    assert "<2.6 seconds><|vision_start|>[video block 3/3: frames [23, 29] (at 2.30, 2.90 s)" in report
