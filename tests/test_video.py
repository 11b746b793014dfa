"""Frame sampling (docs/inputs.md#frame-sampling), smart resize (docs/inputs.md#pixel-budgets), decode errors and the T-GRPO permutation."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import av
import numpy as np
import pytest
from helpers_video import decoded_indices, index_frames, write_video
from PIL import Image

from framethink.data.video import (
    FRAME_THREADS_MIN_PIXELS,
    SampledFrames,
    load_image,
    permute_frames,
    sample_frames,
    smart_nframes,
    verify_media,
)
from framethink.errors import ConfigError, VideoDecodeError
from framethink.models.qwen_vl.inputs import smart_resize


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Grey index clips: name -> path. Written once for the module to keep the tests fast."""
    root = tmp_path_factory.mktemp("clips")
    specs = {
        "20@10": (20, 10),
        "45@10": (45, 10),
        "60@29.97": (60, Fraction(30000, 1001)),
        "40@4": (40, 4),
        "40@10": (40, 10),
        "6@10": (6, 10),
    }
    # a keyframe every 5 frames so that seeking lands inside the clip, not on frame 0
    paths = {name: write_video(root / f"{n}_{name.replace('@', '_')}.mp4", index_frames(n), fps, gop=5)
             for name, (n, fps) in specs.items()}
    for n in (40, 45):  # Matroska: no frame count in the header, timestamps in milliseconds
        paths[f"{n}@10.mkv"] = write_video(root / f"{n}_10.mkv", index_frames(n), 10, container="matroska", gop=5)
    return paths


@pytest.mark.parametrize(
    "total, video_fps, kwargs, expected",
    [
        (30, 10, {}, 6),  # 3 s at 2 fps
        (45, 10, {}, 8),  # 9 floored to even
        (10, 10, {}, 4),  # 2 raised to min_frames
        (3, 10, {}, 2),  # min_frames capped by the 3 frames there are, then floored to even
        (600, 30, {}, 16),  # 40 capped at max_frames
        (60, 30, {}, 4),
        (50, 25, {"min_frames": 5}, 6),  # min_frames rounded up to even
        (100, 10, {"max_frames": 15}, 14),  # max_frames rounded down to even
        (100, 10, {"max_frames": 64}, 20),
        (1000, 10, {"max_frames": 64}, 64),
        (45, 10, {"fps": 1.0}, 4),
        (16, 2, {}, 16),
    ],
)
def test_smart_nframes_hand_values(total, video_fps, kwargs, expected):
    assert smart_nframes(total, video_fps, **kwargs) == expected


def test_smart_nframes_rejects_bad_settings():
    with pytest.raises(ConfigError):
        smart_nframes(30, 10, max_frames=1)
    with pytest.raises(ConfigError):
        smart_nframes(30, 10, fps=0.0)
    with pytest.raises(ValueError):
        smart_nframes(1, 10)


@pytest.mark.parametrize(
    "clip, kwargs, indices, fps",
    [
        ("20@10", {}, [0, 6, 13, 19], 2.0),
        ("45@10", {}, [0, 6, 13, 19, 25, 31, 38, 44], 8 / 45 * 10),
        ("45@10.mkv", {}, [0, 6, 13, 19, 25, 31, 38, 44], 8 / 45 * 10),  # no frame count in the header
        ("60@29.97", {}, [0, 20, 39, 59], 4 / 60 * 30000 / 1001),
        ("40@4", {}, [0, 3, 5, 8, 10, 13, 16, 18, 21, 23, 26, 29, 31, 34, 36, 39], 1.6),
        ("40@4", {"max_frames": 8}, [0, 6, 11, 17, 22, 28, 33, 39], 0.8),
        ("45@10", {"fps": 1.0}, [0, 15, 29, 44], 4 / 45 * 10),
        ("20@10", {"min_frames": 6}, [0, 4, 8, 11, 15, 19], 3.0),
    ],
)
def test_qwen_rule(clips, clip, kwargs, indices, fps):
    got = sample_frames(clips[clip], **kwargs)
    assert isinstance(got, SampledFrames)
    assert got.indices.tolist() == indices
    assert decoded_indices(got.frames).tolist() == indices  # the decoded pixels are those frames
    assert got.frames.shape == (len(indices), 32, 32, 3) and got.frames.dtype == np.uint8
    assert got.fps == pytest.approx(fps)
    video_fps = {"20": 10, "45": 10, "60": 30000 / 1001, "40": 4}[clip.split("@")[0]]
    np.testing.assert_allclose(got.timestamps, np.array(indices) / video_fps)


@pytest.mark.parametrize(
    "clip, num_frames, indices, fps",
    [
        ("20@10", 8, [0, 2, 5, 8, 10, 13, 16, 19], 4.0),  # linspace truncated, as np.linspace(dtype=int)
        ("6@10", 8, [0, 0, 1, 2, 2, 3, 4, 5], 8 / 6 * 10),  # fewer frames than asked: frames repeat
        ("40@4", 16, [0, 2, 5, 7, 10, 13, 15, 18, 20, 23, 26, 28, 31, 33, 36, 39], 1.6),
    ],
)
def test_uniform_rule(clips, clip, num_frames, indices, fps):
    got = sample_frames(clips[clip], rule="uniform", num_frames=num_frames)
    assert got.indices.tolist() == indices
    assert decoded_indices(got.frames).tolist() == indices
    assert got.fps == pytest.approx(fps)


@pytest.mark.parametrize(
    "kwargs, indices, fps",
    [
        ({"start": 1.0, "end": 3.0}, [10, 17, 23, 30], 4 / 21 * 10),  # frames 10..30
        ({"start": 2.05}, [21, 27, 33, 39], 4 / 19 * 10),  # ceil(20.5) = 21, seek lands on keyframe 20
        ({"end": 1.5}, [0, 5, 10, 15], 4 / 16 * 10),
        ({"start": 1.0, "end": 10.0}, [10, 16, 22, 27, 33, 39], 2.0),  # an end past the clip stops at its last frame
        ({"start": 1.0, "end": 3.0, "rule": "uniform", "num_frames": 5}, [10, 15, 20, 25, 30], 5 / 21 * 10),
        ({"start": 3.9, "rule": "uniform", "num_frames": 2}, [39, 39], 2 / 1 * 10),
    ],
)
@pytest.mark.parametrize("clip", ["40@10", "40@10.mkv"])
def test_bounds(clips, clip, kwargs, indices, fps):
    got = sample_frames(clips[clip], **kwargs)
    assert got.indices.tolist() == indices
    assert decoded_indices(got.frames).tolist() == indices
    assert got.fps == pytest.approx(fps)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"start": 4.0}, "outside the clip"),
        ({"start": -0.5}, "outside the clip"),
        ({"start": 2.0, "end": 1.0}, "not after the start"),
        ({"end": 0.0}, "not after the start"),
        ({"start": 3.95}, "no frame lies"),  # ceil(39.5) = 40 is past the last frame
    ],
)
def test_bounds_errors(clips, kwargs, reason):
    with pytest.raises(VideoDecodeError, match=reason) as info:
        sample_frames(clips["40@10"], **kwargs)
    assert info.value.path == str(clips["40@10"])


def test_one_frame_in_range_is_sampled_alone(clips):
    """Fewer frames than the qwen rule's temporal patch of 2: the frame itself (the patchifier repeats it)."""
    got = sample_frames(clips["40@10"], start=3.9)
    assert got.indices.tolist() == [39] and decoded_indices(got.frames).tolist() == [39]


def test_unknown_rule(clips):
    with pytest.raises(ConfigError, match="sampling rule"):
        sample_frames(clips["20@10"], rule="random")


def test_colours_survive_decoding(tmp_path):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 255, 255], [0, 0, 0]], np.uint8)
    frames = np.repeat(colours[:, None, None, :], 32, axis=1).repeat(32, axis=2)  # [6, 32, 32, 3]
    frames[:, :, 16:] = [0, 0, 255]  # right half blue: spatial layout must survive too
    got = sample_frames(write_video(tmp_path / "c.mp4", frames, 2), rule="uniform", num_frames=6)
    diff = np.abs(got.frames.astype(int) - frames.astype(int))
    assert diff.max() <= 4  # limited-range YUV round trip; lossless H.264 adds nothing


def test_image(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png")
    assert got.frames.shape == (1, 10, 14, 3) and got.fps == 0.0
    np.testing.assert_array_equal(got.frames[0], pixels)
    assert got.indices.tolist() == [0] and got.timestamps.tolist() == [0.0]

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = [10, 20, 30, 255]  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    frame = load_image(tmp_path / "b.png").frames[0]
    assert frame[0, 0].tolist() == [10, 20, 30] and frame[3, 3].tolist() == [255, 255, 255]  # composited on white

    Image.fromarray(pixels[..., 0], "L").save(tmp_path / "grey.png")
    grey = load_image(tmp_path / "grey.png").frames[0]
    np.testing.assert_array_equal(grey, np.repeat(pixels[..., :1], 3, axis=2))


@pytest.mark.parametrize(
    "height, width, kwargs, expected",
    [
        (56, 56, {}, (56, 56)),
        (100, 200, {}, (112, 196)),  # round(3.57) = 4, round(7.14) = 7
        (10, 10, {}, (56, 56)),  # below min_pixels: scaled up by sqrt(3136 / 100)
        (1000, 1000, {"max_pixels": 128 * 28 * 28}, (308, 308)),  # above: scaled down, floored
        (480, 640, {"max_pixels": 128 * 28 * 28}, (252, 364)),
        (1080, 1920, {"max_pixels": 256 * 28 * 28}, (336, 588)),  # 1080 / beta / 28 = 12.000000000000002
    ],
)
def test_smart_resize_hand_values(height, width, kwargs, expected):
    assert smart_resize(height, width, **kwargs) == expected


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
        smart_resize as reference,
    )

    sizes = [1, 7, 13, 27, 28, 29, 55, 56, 100, 333, 480, 720, 1080, 1920, 2800]
    limits = [(4, 16384), (4, 128), (128, 256)]  # (min, max) pixels in 28x28 patches
    for height, width, (low, high) in itertools.product(sizes, sizes, limits):
        min_pixels, max_pixels = low * 28 * 28, high * 28 * 28
        if max(height, width) / min(height, width) > 200:
            continue
        ours = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        assert ours == tuple(reference(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels))


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010)


def _empty_mp4(path):
    """An mp4 whose header is written but which holds no frame."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        out.start_encoding()
    return path


def test_decode_errors(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)  # incompressible frames
    data = write_video(tmp_path / "full.mp4", noise, 10).read_bytes()
    (tmp_path / "cut_body.mp4").write_bytes(data[: len(data) // 2])  # header kept, second half of the frames lost
    (tmp_path / "cut_head.mp4").write_bytes(data[:200])  # header itself cut
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    (tmp_path / "zero.mp4").write_bytes(b"")
    _empty_mp4(tmp_path / "no_frames.mp4")
    (tmp_path / "folder.mp4").mkdir()

    cases = {
        "missing.mp4": "file not found",
        "folder.mp4": "frame folder holds no",  # a directory is read as a folder of frame images
        "cut_body.mp4": "could not be decoded",
        "cut_head.mp4": "cannot decode|no video stream",
        "garbage.mp4": "cannot decode",
        "text.mp4": "cannot decode",
        "zero.mp4": "cannot decode",
        "no_frames.mp4": "no video stream",
    }
    for name, reason in cases.items():
        with pytest.raises(VideoDecodeError, match=reason) as info:
            sample_frames(tmp_path / name, rule="uniform", num_frames=40)
        assert info.value.path == str(tmp_path / name)
        if name != "cut_body.mp4":  # its first frames are intact: only the full decode can tell
            with pytest.raises(VideoDecodeError, match=reason):
                verify_media(tmp_path / name, "video")


def test_verify_media(tmp_path, clips):
    verify_media(clips["20@10"], "video")
    verify_media(clips["45@10.mkv"], "video")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "ok.png")
    verify_media(tmp_path / "ok.png", "image")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for name in ("cut.png", "junk.jpg", "missing.png"):
        with pytest.raises(VideoDecodeError) as info:
            verify_media(tmp_path / name, "image")
        assert info.value.path == str(tmp_path / name)
    with pytest.raises(ValueError, match="media kind"):
        verify_media(clips["20@10"], "audio")


def test_permute_frames():
    frames = np.arange(16 * 2).reshape(16, 2)  # stands for [T, ...]
    shuffled, perm = permute_frames(frames, seed=3)
    again, perm_again = permute_frames(frames, seed=3)
    np.testing.assert_array_equal(perm, perm_again)
    np.testing.assert_array_equal(shuffled, again)
    np.testing.assert_array_equal(shuffled, frames[perm])
    assert sorted(perm.tolist()) == list(range(16))
    assert not np.array_equal(permute_frames(frames, seed=4)[1], perm)
    for num in (2, 3, 4):  # small T: the identity would often be drawn
        for seed in range(50):
            order = permute_frames(np.arange(num), seed)[1]
            assert not np.array_equal(order, np.arange(num))
    assert permute_frames(np.arange(1), seed=0)[1].tolist() == [0]


def test_frame_folder_is_sampled_like_a_video(tmp_path):
    """MVBench's episodic_reasoning clips are folders of JPEG/PNG frames at 3 fps."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(12):  # frame i has grey level 20 * i
        Image.fromarray(np.full((28, 28, 3), 20 * i, dtype=np.uint8)).save(folder / f"{i:05d}.png")
    verify_media(folder, "video")
    sampled = sample_frames(folder, rule="qwen", fps=1.5, max_frames=16)
    # 12 frames at 3 fps = 4 s; 4 s * 1.5 fps = 6 frames at round(linspace(0, 11, 6))
    assert sampled.indices.tolist() == [0, 2, 4, 7, 9, 11]
    assert [int(f[0, 0, 0]) for f in sampled.frames] == [0, 40, 80, 140, 180, 220]
    assert sampled.fps == pytest.approx(6 / 12 * 3.0)
    bounded = sample_frames(folder, rule="uniform", num_frames=3, start=1.0, end=3.0)
    assert bounded.indices.tolist() == [3, 6, 9]


def test_empty_frame_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no .* images"):
        sample_frames(tmp_path / "empty")
    with pytest.raises(VideoDecodeError):
        verify_media(tmp_path / "empty", "video")


@pytest.mark.parametrize("container", ["mp4", "matroska", "h264"])  # raw H.264 packets carry no timestamps
def test_keyframe_seeking_returns_the_frames_of_a_full_decode(tmp_path, container):
    texture = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frames = np.stack([np.roll(texture, i, axis=1) for i in range(60)])  # [60, 32, 32, 3] drifting: no scene cuts
    path = write_video(tmp_path / f"clip.{container}", frames, 10, container=container, gop=4)
    with av.open(str(path)) as video:
        rate = float(video.streams.video[0].average_rate or video.streams.video[0].guessed_rate)  # raw: 25 guessed
        keyframes = sum(p.is_keyframe for p in video.demux(video=0) if p.size)
    with av.open(str(path)) as video:
        full = np.stack([f.to_ndarray(format="rgb24") for f in video.decode(video=0)])  # [60, 32, 32, 3]
    assert len(full) == 60 and keyframes == 15  # a keyframe every 4 frames to jump to
    got = sample_frames(path, rule="uniform", num_frames=5)  # 0, 14, 29, 44, 59: jumps from keyframe to keyframe
    assert got.indices.tolist() == [0, 14, 29, 44, 59]
    np.testing.assert_array_equal(got.frames, full[got.indices])
    bounded = sample_frames(path, rule="uniform", num_frames=4, start=21.5 / rate, end=40.5 / rate)  # frames 22..40
    assert bounded.indices.tolist() == [22, 28, 34, 40]
    np.testing.assert_array_equal(bounded.frames, full[bounded.indices])


@pytest.mark.parametrize("frame_threads", [False, True])
def test_dense_and_seeking_decodes_return_the_frames_of_a_full_decode(tmp_path, frame_threads):
    """Every frame (decoded forward, no seek) and a sparse sample (seeking) against PyAV's own per-frame conversion,
    on frames below and at the size where decoding switches to frame threads."""
    side = 2 * math.ceil(math.isqrt(FRAME_THREADS_MIN_PIXELS) / 2) if frame_threads else 32  # even sides
    texture = np.random.default_rng(3).integers(0, 256, (side, side, 3), dtype=np.uint8)
    frames = np.stack([np.roll(texture, 3 * i, axis=0) for i in range(30)])  # [30, side, side, 3]
    path = write_video(tmp_path / "clip.mp4", frames, 10, gop=6)
    with av.open(str(path)) as video:
        assert (video.streams.video[0].width ** 2 >= FRAME_THREADS_MIN_PIXELS) == frame_threads
        full = np.stack([f.to_ndarray(format="rgb24") for f in video.decode(video=0)])  # [30, side, side, 3]
    dense = sample_frames(path, rule="uniform", num_frames=30)
    assert dense.indices.tolist() == list(range(30))
    np.testing.assert_array_equal(dense.frames, full)
    sparse = sample_frames(path, rule="uniform", num_frames=4)  # 0, 9, 19, 29: a seek to keyframes 6, 18 and 24
    assert sparse.indices.tolist() == [0, 9, 19, 29]
    np.testing.assert_array_equal(sparse.frames, full[[0, 9, 19, 29]])
