"""lmms-eval evaluates framethink checkpoints through its own command line (docs/lmms-eval.md).

lmms-eval 0.7.3 is installed into its own virtualenv layered over the test environment (every package of the
test environment stays visible, lmms-eval's extra dependencies and its filelock < 4 sit in front of them): its
requirements conflict with the test environment's (it pins av < 16, whose frame converter lacks the `threads`
argument framethink's decoder uses, and it needs filelock's pre-4 internals). The layer is built once, in the test
environment's own folder (~1 GB, about a minute with a warm pip cache), then reused; framethink itself is
reinstalled into it (without dependencies) whenever pyproject.toml changes, so its `lmms_eval.models` entry
point is the current one.

The runs are offline: a local task (a task yaml, a json dataset of synthetic clips made by `framethink data synth`)
against tiny random checkpoints made by `framethink model tiny`. What lmms-eval generates must equal what
`framethink eval run` generates for the same clips, and the log-likelihoods the model class scores must equal the
adapter's.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from framethink.cli import main
from framethink.data.prompts import get_template
from framethink.data.records import load_records
from framethink.models import load_adapter
from framethink.models.adapter import Decoding
from framethink.models.registry import read_training_settings, write_training_settings
from framethink.data.clips import FrameRule

REPO = Path(__file__).resolve().parents[1]
LMMS_EVAL = "lmms-eval==0.7.3"
LAYER = Path(sys.prefix) / "lmms-eval-0.7.3"
STOP = "\n\n"
MAX_NEW_TOKENS = 12

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: {output_type}
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
{extra}
"""
GENERATE = """\
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  until: ["\\n\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""
LOGLIKELIHOOD = """\
import json, sys
from lmms_eval.api.instance import Instance
from framethink.eval.lmms_eval_model import FrameThink

docs, model, continuations = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
lm = FrameThink(pretrained=model)
lm.task_dict = {"synth": {"test": docs}}
requests = [Instance(request_type="loglikelihood", idx=0, metadata={"task": "synth", "doc_id": i, "repeats": 1},
                     arguments=(doc["context"], continuation, lambda d: [d["video"]], i, "synth", "test"))
            for i, doc in enumerate(docs) for continuation in continuations[i]]
print(json.dumps(lm.loglikelihood(requests)))
"""
UTILS = '''\
import re


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["context"]


def process_results(doc, results):
    found = re.findall(r"<answer>\\s*(.*?)\\s*</answer>", results[0], re.S)
    return {"accuracy": float(bool(found) and found[-1] == doc["answer"])}
'''


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


@pytest.fixture(scope="session")
def lmms_eval_python() -> Path:
    """The layer's python: lmms-eval 0.7.3 in front of the test environment, framethink's metadata current."""
    python, pip = LAYER / "bin" / "python", [str(LAYER / "bin" / "python"), "-m", "pip", "install", "-q"]
    if not (LAYER / ".installed").is_file():
        _run([sys.executable, "-m", "venv", str(LAYER)])
        site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        # a .pth line runs at start-up: the test environment's packages (and their own .pth files) come after the layer's
        Path(site, "zz_test_environment.pth").write_text(
            f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
        _run([*pip, "-c", str(REPO / "constraints.txt"), LMMS_EVAL, "filelock>=3.16,<4"])
        # lmms-eval pins av < 16; framethink decodes with the test environment's av, so the layer keeps none
        _run([str(python), "-m", "pip", "uninstall", "-y", "-q", "av"])
        (LAYER / ".installed").write_text(LMMS_EVAL + "\n")
    stamp, digest = LAYER / ".framethink-pyproject", hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text() != digest:
        _run([*pip, "--no-deps", "--no-build-isolation", "-e", str(REPO)])
        stamp.write_text(digest)
    return python


def _offline_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_the_entry_point_registers_the_framethink_model(lmms_eval_python):
    probe = "from lmms_eval.models import get_model; c = get_model('framethink'); print(c.__module__, c.__name__)"
    out = _run([str(lmms_eval_python), "-c", probe]).stdout.split()
    assert out[-2:] == ["framethink.eval.lmms_eval_model", "FrameThink"]


@pytest.fixture(scope="module")
def synth_clips(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms_synth")
    assert main(["data", "synth", "--out", str(out), "--train", "0", "--test", "2", "--frames", "8", "--size", "28",
                 "--tasks", "color_first,color_last", "--fixed-options"]) == 0
    return out / "test.json"


def _write_task(folder: Path, name: str, docs: list[dict], output_type: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(docs))
    (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, docs=folder / f"{name}.json", output_type=output_type,
                                                          extra=GENERATE.format(max_new_tokens=MAX_NEW_TOKENS)))
    (folder / "utils.py").write_text(UTILS)


@pytest.mark.parametrize("arch", ["qwen2.5-vl", "tinyllava-video"])
def test_lmms_eval_command_line_equals_framethink_eval(arch, lmms_eval_python, synth_clips, tmp_path):
    model = tmp_path / "model"
    assert main(["model", "tiny", "--arch", arch, "--out", str(model)]) == 0
    if arch == "qwen2.5-vl":  # a saved template and frame rule, as a trained model carries them, must be used
        write_training_settings(model, template="tinyllava-r1", system=None,
                                frames=FrameRule(rule="uniform", num_frames=4, max_frames=4))
    adapter = load_adapter(model)
    template = adapter.default_template
    assert template == read_training_settings(model).get("template", template)

    records = load_records(synth_clips)
    choices = get_template(template).choices  # the task writes the options the way the model's template does
    docs = [{"id": r.id, "video": str(r.media[0]), "answer": r.answer,
             "context": choices.format(problem=r.question, options="\n".join(r.options))} for r in records]
    tasks = tmp_path / "tasks"
    _write_task(tasks, "framethink_synth", docs, "generate_until")

    out = tmp_path / "lmms"
    _run([str(lmms_eval_python), "-m", "lmms_eval", "--model", "framethink", "--model_args", f"pretrained={model}",
          "--tasks", "framethink_synth", "--include_path", str(tasks), "--batch_size", "2",
          "--device", "cpu", "--output_path", str(out), "--log_samples"], env=_offline_env(tmp_path), cwd=tmp_path)

    def samples(task: str) -> list[dict]:
        (file,) = out.glob(f"*/*_samples_{task}.jsonl")
        return sorted((json.loads(line) for line in file.read_text().splitlines() if line.strip()), key=lambda s: s["doc_id"])

    # generation: what framethink's own evaluation generates for the same clips, cut at the task's stop string
    assert main(["eval", "run", "--model", str(model), "--bench", str(synth_clips), "--out", str(tmp_path / "ft"),
                 "--temperature", "0", "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "ft/ordered/predictions.jsonl").read_text().splitlines()[1:]]
    expected = {line["id"]: line["output"].split(STOP, 1)[0] for line in lines}
    generated = samples("framethink_synth")
    # the logged response after lmms-eval's own whitespace strip (it omits "resps" when nothing was stripped)
    assert [s["filtered_resps"] for s in generated] == [expected[docs[s["doc_id"]]["id"]].strip() for s in generated]
    (results,) = out.glob("*/*_results.json")
    accuracy = json.loads(results.read_text())["results"]["framethink_synth"]["accuracy,none"]
    assert accuracy == sum(s["accuracy"] for s in generated) / len(generated)

    # log-likelihood (multiple_choice tasks): the model class on the same prompts against the adapter's own log-probs
    # and greedy decoding (lmms-eval 0.7.3's evaluator turns these (float, bool) results into strings, so its command
    # line cannot run loglikelihood tasks for any model; docs/lmms-eval.md)
    continuations = [[f" {x}" for x in "ABCDEF"] + [" the clip starts red"] for _ in records]
    scored = json.loads(_run([str(lmms_eval_python), "-c", LOGLIKELIHOOD, json.dumps(docs), str(model),
                              json.dumps(continuations)], env=_offline_env(tmp_path)).stdout.splitlines()[-1])
    pairs = iter(scored)
    for record, texts in zip(records, continuations):
        prompt = adapter.encode(record, template=template)
        for text in texts:
            value, greedy = next(pairs)
            ids = adapter.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            decoding = Decoding(max_new_tokens=ids.shape[1], temperature=0.0, top_p=1.0, do_sample=False)
            with torch.no_grad():
                want = adapter.completion_logprobs([prompt], [0], ids).sum().item()
                completion = adapter.generate([prompt], [0], decoding)
            assert value == pytest.approx(want, abs=1e-4)
            assert greedy == (completion.tokens[0, : int(completion.lengths[0])].tolist() == ids[0].tolist())


def test_lmms_eval_protocol_matches_the_packages_own_task_functions(lmms_eval_python, tmp_path):
    """The `lmms-eval` scoring protocol's comparisons against lmms-eval's own functions (tests/test_eval_protocols.py,
    skipped in the test environment, which cannot hold lmms-eval's pins) run here inside the lmms-eval layer and must
    pass there, not skip."""
    tests = ["test_shared_lmms_eval_functions_match_the_package", "test_task_rules_match_the_package",
             "test_multiple_choice_task_rules_match_the_package"]
    done = _run([str(lmms_eval_python), "-m", "pytest", "-o", "addopts=", "-q", "-rs", "-p", "no:cacheprovider",
                 str(REPO / "tests" / "test_eval_protocols.py"), "-k", " or ".join(tests)],
                cwd=REPO, env=_offline_env(tmp_path))
    assert f"{len(tests)} passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
