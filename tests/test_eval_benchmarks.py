"""Every benchmark layout loads into the right records and scores to hand-computed accuracies."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_fixtures import (
    scripted,
    write_json,
    write_mlvu,
    write_mmvu,
    write_mvbench,
    write_tempcompass,
    write_video_r1_file,
    write_videomme,
    write_tempcompass_release_quirks,
    write_videommmu,
    write_vsibench,
)

from framethink.errors import ConfigError, DataError
from framethink.eval.benchmarks import load_benchmark, load_benchmarks
from framethink.eval.predictions import read_predictions
from framethink.eval.runner import RunSettings, run_eval
from framethink.eval.scoring import score_predictions
from framethink.models.adapter import Decoding


def _score(tmp_path, bench, outputs: dict[str, str]):
    settings = RunSettings(model="m", frames=4, max_pixels=None, mode="reason", template="video-r1-eval",
                           frame_order="ordered", decoding=Decoding(max_new_tokens=8, temperature=0.0, do_sample=False))
    path = run_eval(scripted(outputs), [bench], tmp_path / "out", settings, batch_size=4)
    return score_predictions(read_predictions(path).lines)[bench.name]


def test_mvbench_answers_are_letters_of_candidate_text_and_bounds_are_kept(tmp_path):
    root = write_mvbench(tmp_path)
    bench = load_benchmark("mvbench", tmp_path)
    assert len(bench.records) == 21 and len({r.source for r in bench.records}) == 20
    by_id = {r.id: r for r in bench.records}
    seq0, seq1 = by_id["action_sequence/0"], by_id["action_sequence/1"]
    assert seq0.options == ["A. red", "B. green", "C. blue"] and seq0.answer == "B"
    assert seq1.answer == "A" and (seq1.start, seq1.end) == (1.5, 4.0)
    assert seq0.media == [root / "video/star/Charades_v1_480/action_sequence_0.mp4"]
    assert by_id["action_antonym/0"].start is None  # no bounds for this source
    episodic = by_id["episodic_reasoning/0"]
    assert episodic.media[0].is_dir() and episodic.extra["fps"] == 3.0 and episodic.start == 1.5

    # 21 items: 14 answered right in every accepted form, 5 wrong, 2 unparsable -> 14/21
    forms = ["B", "(B)", "B.", "B. green", "<think>hmm</think><answer>B</answer>", " b ", "<answer>(B) green</answer>"]
    ids = sorted(by_id)
    outputs = {}
    for i, rid in enumerate(ids):
        gold = by_id[rid].answer
        if i < 14:
            outputs[rid] = forms[i % len(forms)].replace("B", gold).replace("b", gold.lower())
        elif i < 19:
            outputs[rid] = "C"
        else:
            outputs[rid] = "I would say green"  # no letter: wrong and counted, never guessed
    score = _score(tmp_path, bench, outputs)
    assert score.metric == "accuracy"
    assert score.overall.score == pytest.approx(100 * 14 / 21)
    assert (score.overall.items, score.overall.unparsable) == (21, 2)
    assert sum(t.unparsable for t in score.tasks.values()) == 2


def test_mvbench_answer_not_among_candidates_names_the_record(tmp_path):
    root = write_mvbench(tmp_path)
    file = root / "json/action_count.json"
    items = json.loads(file.read_text())
    items[0]["answer"] = "purple"
    file.write_text(json.dumps(items))
    with pytest.raises(DataError, match=r"action_count.json:\[0\]: field 'answer': 'purple' is not one of the candidates"):
        load_benchmark("mvbench", tmp_path)


def test_videomme_scores_per_duration(tmp_path):
    write_videomme(tmp_path)
    bench = load_benchmark("videomme", tmp_path)
    assert [r.extra["duration"] for r in bench.records] == ["short", "short", "medium", "medium", "long", "long"]
    assert bench.records[4].media[0].name == "vid003.mkv"
    assert bench.records[0].source == "Counting Problem" and bench.records[0].options[1] == "B. two"
    # gold A B C D A B: short right right, medium right wrong, long wrong unparsable
    outputs = dict(zip([r.id for r in bench.records], ["A", "<answer>B</answer>", "C. three", "A", "D", "two"]))
    score = _score(tmp_path, bench, outputs)
    assert score.overall.score == pytest.approx(50.0)
    assert {d: g.score for d, g in score.durations.items()} == pytest.approx({"short": 100.0, "medium": 50.0, "long": 0.0})
    assert list(score.durations) == ["short", "medium", "long"]
    assert score.durations["long"].unparsable == 1
    assert score.tasks["Counting Problem"].score == pytest.approx(200 / 3)  # items 0, 2, 4: right, right, wrong


def test_mlvu_is_the_macro_average_of_its_seven_tasks(tmp_path):
    write_mlvu(tmp_path)
    bench = load_benchmark("mlvu", tmp_path)
    by_id = {r.id: r for r in bench.records}
    assert by_id["plotQA/2"].answer == "C" and by_id["plotQA/2"].options[2] == "C. 3"
    outputs = {"plotQA/0": "B", "plotQA/1": "B", "plotQA/2": "A", "needle/0": "B", "ego/0": "B", "count/0": "C",
             "order/0": "B", "anomaly_reco/0": "B", "topic_reasoning/0": "B"}
    score = _score(tmp_path, bench, outputs)
    # task accuracies: plotQA 1/3, needle 1, ego 0, count 1, order 1, anomaly 0, topic 1 -> macro (1/3 + 4) / 7
    assert score.metric == "task mean"
    assert score.overall.score == pytest.approx(100 * (1 / 3 + 4) / 7)  # the item mean would be 5/9
    assert score.tasks["plotQA"].score == pytest.approx(100 / 3)


def test_mmvu_keeps_the_multiple_choice_subset(tmp_path):
    write_mmvu(tmp_path)
    bench = load_benchmark("mmvu", tmp_path)
    assert [r.id for r in bench.records] == ["validation_1", "validation_2", "validation_3"]
    assert bench.records[1].options == ["A. O2", "B. CO2", "C. N2", "D. H2"]  # empty choice E dropped
    assert bench.records[1].extra["all_choices"] == ["A", "B", "C", "D", "E"]  # kept for TinyLLaVA's guess
    assert bench.records[2].media[0] == tmp_path / "mmvu/videos/Art/1.mp4" and bench.records[2].source == "Art"
    score = _score(tmp_path, bench, {"validation_1": "A", "validation_2": "B", "validation_3": "D"})
    assert score.overall.score == pytest.approx(200 / 3)
    assert score.tasks["Chemistry"].score == 100.0 and score.tasks["Art"].score == 0.0


def test_vsibench_mixes_exact_and_mra_and_averages_task_scores(tmp_path):
    write_vsibench(tmp_path)
    bench = load_benchmark("vsibench", tmp_path)
    types = [r.problem_type for r in bench.records]
    assert types == ["multiple choice"] * 6 + ["regression"] * 3
    assert bench.records[0].source == "object_rel_direction" and bench.records[0].extra["subtask"] == "easy"
    assert bench.records[1].media[0] == tmp_path / "vsibench/scannet/scene1.mp4"
    outputs = {"0": "A", "1": "A", "2": "C", "3": "D", "4": "B",  # easy 1/1, medium 0/1, hard 2/3
               "5": "B", "6": "<answer>12</answer>", "7": "20", "8": "about twenty"}
    score = _score(tmp_path, bench, outputs)
    rel_direction = (100 + 0 + 200 / 3) / 3  # the mean of the three levels, not the pooled 3/5
    # counting: |12-10|/10 = 0.2 <= 1-θ for θ = 0.50..0.80 -> 7 of 10 thresholds (`<=`, the VSI-Bench authors')
    assert score.tasks["object_counting"].score == pytest.approx(70.0)
    assert score.tasks["object_rel_direction"].score == pytest.approx(rel_direction)
    assert score.tasks["room_size_estimation"].score == pytest.approx(50.0)
    assert score.tasks["room_size_estimation"].unparsable == 1
    assert score.overall.score == pytest.approx((rel_direction + 100 + 70 + 50) / 4)


def test_tempcompass_splits_inline_options(tmp_path):
    write_tempcompass(tmp_path)
    bench = load_benchmark("tempcompass", tmp_path)
    first = bench.records[0]
    assert (first.id, first.question, first.options, first.answer) == (
        "100/action/0", "What is the man doing?", ["A. dunking", "B. dribbling", "C. passing"], "A")
    assert first.extra["answer_text"] == "A. dunking"
    score = _score(tmp_path, bench, {"100/action/0": "A", "100/action/1": "B", "100/direction/0": "B. right",
                                     "200/order/0": "A"})
    assert score.overall.score == pytest.approx(50.0)
    assert {t: g.score for t, g in score.tasks.items()} == {"action": 50.0, "direction": 100.0, "order": 0.0}


def test_tempcompass_release_layout_quirks_load(tmp_path):
    """The released multi-choice.json's option lines: a leading space (1100319395_reverse.direction[2]), a trailing
    space (1083113449.speed[1]), no space after the letter (1022115337.order[1, 2]) -- all load, options stripped."""
    write_tempcompass_release_quirks(tmp_path)
    bench = load_benchmark("tempcompass", tmp_path)
    by_id = {r.id: r for r in bench.records}
    spinning = by_id["1100319395_reverse/direction/2"]
    assert spinning.question == "In which direction is the circular pattern spinning?"
    assert spinning.options == ["A. towards the screen", "B. anticlockwise", "C. clockwise", "D. away from the screen"]
    assert spinning.answer == "B" and spinning.extra["answer_text"] == "B. anticlockwise"
    assert by_id["1083113449/speed/0"].options == ["A. rewind", "B. time-lapse", "C. slow"]
    second = by_id["1022115337/order/1"]
    assert second.options == ["A. dancing", "B. sending an air kiss", "C. Both events happen at the same time"]
    assert second.answer == "B" and second.question == "Which event occurs second?"
    assert len(bench.records) == 6


def test_tempcompass_option_lines_out_of_order_name_the_item(tmp_path):
    write_json(tmp_path / "tempcompass/questions/multi-choice.json",
               {"5": {"speed": [{"question": "How fast?\nA. fast\nC. slow", "answer": "A. fast"}]}})
    (tmp_path / "tempcompass/videos").mkdir(parents=True)
    (tmp_path / "tempcompass/videos/5.mp4").write_bytes(b"")
    with pytest.raises(DataError, match=r"multi-choice.json:5.speed\[0\]: field 'question': expected a question then "
                                        r"option lines"):
        load_benchmark("tempcompass", tmp_path)


def test_videommmu_tracks_and_open_numeric_answers(tmp_path):
    write_videommmu(tmp_path)
    bench = load_benchmark("videommmu", tmp_path)
    by_id = {r.id: r for r in bench.records}
    art = by_id["Perception/validation_Art_1"]
    assert art.options == ["A. red", "B. blue", "C. green"] and art.media[0] == tmp_path / "videommmu/Art/validation_Art_1.mp4"
    assert by_id["Adaptation/validation_Physics_5"].problem_type == "numerical"
    outputs = {"Perception/validation_Art_1": "C", "Perception/validation_Biology_2": "A",
               "Comprehension/validation_Finance_3": "A", "Adaptation/validation_Math_4": "B",
               "Adaptation/validation_Physics_5": "<answer>42</answer>"}
    score = _score(tmp_path, bench, outputs)
    assert score.overall.score == pytest.approx(80.0)
    assert {t: g.score for t, g in score.tasks.items()} == {"Adaptation": 100.0, "Comprehension": 0.0, "Perception": 100.0}


def test_video_r1_eval_file_is_used_when_the_released_layout_is_absent(tmp_path):
    write_video_r1_file(tmp_path / "eval_mvbench.json")
    bench = load_benchmark("mvbench", tmp_path)
    assert bench.name == "mvbench" and [r.id for r in bench.records] == ["1", "2", "3", "4", "5"]
    # tasks from data_source; mc right, wrong, unparsable; numerical right; regression 11 vs 10 -> MRA 0.9
    # (0.1 <= 1-θ for θ = 0.50..0.90)
    score = _score(tmp_path, bench, {"1": "A", "2": "A", "3": "maybe", "4": "3", "5": "11"})
    assert score.overall.score == pytest.approx(100 * (1 + 0 + 0 + 1 + 0.9) / 5)
    assert score.tasks["first"].unparsable == 1 and score.tasks["last"].items == 3


def test_record_file_path_is_a_benchmark_named_after_the_file(tmp_path):
    file = write_video_r1_file(tmp_path / "synth" / "test.json")
    (bench,) = load_benchmarks([str(file)], None)
    assert bench.name == "test" and bench.records[0].media[0] == tmp_path / "synth/videos/a.mp4"


def test_missing_or_misplaced_files_say_what_was_expected_where(tmp_path):
    with pytest.raises(DataError, match=r"mvbench.*neither exists"):
        load_benchmark("mvbench", tmp_path)
    root = write_mvbench(tmp_path)
    (root / "json/state_change.json").rename(root / "state_change.json")  # misplaced
    with pytest.raises(DataError, match=r"json/state_change.json.*not found: expected the MVBench task file of 'state_change'"):
        load_benchmark("mvbench", tmp_path)
    write_videomme(tmp_path)
    (tmp_path / "videomme/data/vid002.mp4").unlink()  # one missing video: loaded, the run reports that item
    by_id = {r.id: r for r in load_benchmark("videomme", tmp_path).records}
    assert by_id["002-1"].media[0] == tmp_path / "videomme/data/vid002.mp4"
    for video in (tmp_path / "videomme/data").iterdir():
        video.unlink()
    with pytest.raises(DataError, match=r"none of the 6 media files of benchmark 'videomme' exists; the first was "
                                        r"expected at .*vid001.mp4 \(is --data-root"):
        load_benchmark("videomme", tmp_path)
    (tmp_path / "vsibench").mkdir()
    with pytest.raises(DataError, match=r"vsibench/test-\*.parquet.*expected the VSI-Bench parquet"):
        load_benchmark("vsibench", tmp_path)
    write_json(tmp_path / "tc/tempcompass/questions/multi-choice.json",
               {"7": {"speed": [{"question": "How fast?\nA. fast\nB. slow", "answer": "A. fast"}]}})
    with pytest.raises(DataError, match=r"media files of benchmark 'tempcompass' exists; the first was expected at "
                                        r".*tempcompass/videos/7.mp4"):
        load_benchmark("tempcompass", tmp_path / "tc")
    with pytest.raises(ConfigError, match="needs --data-root"):
        load_benchmark("mlvu", None)
    with pytest.raises(ConfigError, match="unknown benchmark 'mvbnch'"):
        load_benchmark("mvbnch", tmp_path)


def test_duplicate_ids_and_bad_numeric_gold_are_refused(tmp_path):
    file = write_video_r1_file(tmp_path / "a.json")
    records = json.loads(file.read_text())
    records[1]["problem_id"] = 1
    write_json(file, records)
    with pytest.raises(DataError, match="duplicate id '1'"):
        load_benchmark(str(file), None)
    parquet = write_vsibench(tmp_path) / "test-00000-of-00001.parquet"
    rows = pq.read_table(parquet).to_pylist()
    rows[6]["ground_truth"] = "ten"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    with pytest.raises(DataError, match="row 6: field 'ground_truth': a numeric task needs a number"):
        load_benchmark("vsibench", tmp_path)
