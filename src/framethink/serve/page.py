"""The web page of `framethink serve`, built with gradio (docs/serving.md#the-page).

Pick an example video or upload one, ask a question (options optional), and watch the model's reasoning stream in;
then the answer and the strip of frames the model saw, each with its time. With "compare" on, the same question is
asked with the frames shuffled, side by side, in the same batched generation: a model that reasons over time
answers order questions differently when the order is gone.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import gradio as gr

from framethink.data.video import verify_media
from framethink.errors import FramethinkError
from framethink.infer import Reply, decoding_settings, question_record
from framethink.serve.session import Done, ModelSession

ORDERS = ("ordered", "shuffled")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")


def frame_strip(reply: Reply) -> list[tuple]:
    """Gallery items: each frame the model saw, in its order, captioned with its time."""
    return [(frame, f"{time:.2f} s") for frame, time in zip(reply.frames, reply.frame_times)]


def answer_text(reply: Reply) -> str:
    text = reply.answer or "(no <answer> tag in the reply)"
    return text + (" (stopped at the token limit)" if reply.finish_reason == "length" else "")


def build_page(session: ModelSession, examples: Sequence[Path] = ()) -> gr.Blocks:
    """The page's Blocks; `examples` are videos offered to pick from."""
    adapter = session.adapter
    rule = adapter.frames
    frames_text = (f"{rule.num_frames} uniform frames" if rule.rule == "uniform"
                   else f"{rule.fps:g} fps, {rule.min_frames}-{rule.max_frames} frames")
    with gr.Blocks(title=f"framethink: {session.name}", analytics_enabled=False) as page:
        gr.Markdown(f"## framethink: {session.name}\nFrames: {frames_text}; prompt template "
                    f"`{adapter.default_template}`. Uploads up to "
                    f"{session.limits.max_upload_bytes / 2**20:.3g} MiB.")
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="video", sources=["upload"], include_audio=True, elem_id="video")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[video], label="example videos", elem_id="examples")
            with gr.Column(scale=1):
                question = gr.Textbox(label="question", lines=2, elem_id="question")
                options = gr.Textbox(label="options (comma-separated, optional)", elem_id="options")
                compare = gr.Checkbox(label="compare with shuffled frames, side by side", value=True,
                                      elem_id="compare")
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
        outputs = []
        with gr.Row():
            for order in ORDERS:
                with gr.Column(visible=order == "ordered") as column:
                    gr.Markdown(f"### {order} frames")
                    reasoning = gr.Textbox(label="reasoning (streamed)", lines=8, max_lines=20, interactive=False,
                                           elem_id=f"reasoning-{order}")
                    answer = gr.Textbox(label="answer", interactive=False, elem_id=f"answer-{order}")
                    strip = gr.Gallery(label="frames the model saw (time in the video)", columns=8,
                                       object_fit="contain", height="auto", elem_id=f"frames-{order}")
                outputs.append((column, reasoning, answer, strip))

        def answer_question(video_path: str | None, question_text: str, options_text: str,
                            side_by_side: bool) -> Iterator[list]:
            orders = ORDERS if side_by_side else ORDERS[:1]
            record = page_record(video_path, question_text, options_text)
            texts = [""] * len(ORDERS)
            visible = [gr.Column(visible=order in orders) for order in ORDERS]
            yield [*visible, *texts, "", "", [], []]
            decoding = decoding_settings(max_new_tokens=session.limits.max_new_tokens)
            try:
                for event in session.stream(record, decoding, frame_orders=orders):
                    if isinstance(event, Done):
                        replies = event.replies + [None] * (len(ORDERS) - len(event.replies))
                        yield [*visible, *texts, *(answer_text(r) if r else "" for r in replies),
                               *(frame_strip(r) if r else [] for r in replies)]
                    else:
                        texts[event.row] += event.text
                        yield [*visible, *texts, gr.skip(), gr.skip(), gr.skip(), gr.skip()]
            except FramethinkError as err:
                raise gr.Error(str(err)) from None

        ask_button.click(
            answer_question, inputs=[video, question, options, compare],
            outputs=[*(o[0] for o in outputs), *(o[1] for o in outputs), *(o[2] for o in outputs),
                     *(o[3] for o in outputs)],
        )
    return page


def page_record(video_path: str | None, question_text: str, options_text: str):
    """The record of the page's inputs; a missing, oversized or undecodable video raises gr.Error, which the page
    shows (the server goes on)."""
    if not video_path:
        raise gr.Error("Choose an example video or upload one first.")
    path = Path(video_path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise gr.Error(f"{path.name}: not a video file (expected one of {', '.join(VIDEO_SUFFIXES)})")
    try:
        verify_media(path, "video")
        return question_record(path, "video", question_text, options_text.split(",") if options_text else ())
    except FramethinkError as err:
        raise gr.Error(str(err)) from None
