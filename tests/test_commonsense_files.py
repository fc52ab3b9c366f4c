"""LLM-Adapters' commonsense files (one JSON list of instruction/input/output/answer records) in domix instruct
and eval-choice: parsing in both protocols' terms, the published keyword extraction, and refused bad files."""

import json
import re
import tempfile
from pathlib import Path

import pytest

from domix.cli import main
from domix.errors import DomixError
from domix.llm.choice import evaluate_choice, extract_answer, read_questions
from domix.llm.data import Example, read_examples

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "commonsense"
FILES = sorted(DATA.glob("*/*.json")) if DATA.is_dir() else []
# the published script's regex per benchmark (LLM-Adapters commonsense_evaluate.py), by this pack's folder names
FAMILY = {"boolq": ["false", "true"], "piqa": ["solution1", "solution2"],
          **{name: [f"answer{i}" for i in range(1, 6)] for name in ("arc_e", "arc_c", "obqa")}}

ARC = {"instruction": "Please choose the correct answer to the question: Which is a metal?\n\nAnswer1: wood Answer2: iron "
                      "Answer3: glass Answer4: salt\n\nAnswer format: answer1/answer2/answer3/answer4",
       "input": "", "output": "the correct answer is answer2", "answer": "answer2"}
BOOLQ = {"instruction": "Please answer the following question with true or false, question: is iron a metal?\n\n"
                        "Answer format: true/false", "input": "", "output": "the correct answer is true", "answer": "true"}


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value, indent=4))  # as LLM-Adapters writes its files
    return path


def real(name: str, split: str = "test") -> list[dict]:
    if not (DATA / name / f"{split}.json").is_file():
        pytest.skip(f"the data pack's commonsense/{name} is not here")
    return json.loads((DATA / name / f"{split}.json").read_text())


@pytest.mark.skipif(not FILES, reason="../shared/data/commonsense is not here")
@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_record_of_the_published_files_parses_in_both_protocols(path):
    records = json.loads(path.read_text())
    fmt, questions = read_questions(path)
    assert fmt == "llm_adapters" and len(questions) == len(records)
    for record, q in zip(records, questions):
        listed = re.search(r"Answer format: (\S+)\s*$", record["instruction"]).group(1).split("/")
        assert len(q.choices) == len(q.contexts) == len(q.continuations) == len(listed)
        assert 0 <= q.label < len(listed)
        assert q.keywords == FAMILY[path.parent.name] and q.keywords[q.label] == record["answer"]
        assert q.instruction == record["instruction"]  # generate: the instruction as it is
        assert extract_answer(record["output"], q.keywords) == q.label  # the gold output reads as the gold answer
        if path.parent.name == "boolq":
            assert (q.choices, q.continuations) == (["no", "yes"], [" no", " yes"])
            assert sorted(listed) == ["false", "true"] and q.label == ["false", "true"].index(record["answer"])  # no, yes
        else:
            assert q.label == listed.index(record["answer"])
            word = q.keywords[0][:-1].capitalize()
            assert all(re.search(rf"{word}{i}:\s*{re.escape(choice)}", record["instruction"]) for i, choice in enumerate(q.choices, 1))
        assert q.contexts[0].startswith("Question: ") and q.contexts[0].endswith("\nAnswer:")
        assert "Please" not in q.contexts[0][:20] and "Answer format" not in q.contexts[0]


def test_the_loglikelihood_terms_of_each_family():
    hellaswag = {"instruction": "Please choose the correct ending to complete the given sentence: Cooking: He cuts. then he"
                                "\n\nEnding1: eats [title] it Ending2: x Ending3: y Ending4: z\n\nAnswer format: ending1/ending2/ending3/ending4",
                 "input": "", "output": "the correct answer is ending1", "answer": "ending1"}
    winogrande = {"instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: Ann gave Bea "
                                 "food because _ was hungry.\n\nOption1: Ann Option2: Bea Answer format: option1/option2",
                  "input": "", "output": "the correct answer is option2", "answer": "option2"}
    q = {name: _one(record) for name, record in [("arc", ARC), ("boolq", BOOLQ), ("hellaswag", hellaswag), ("winogrande", winogrande)]}
    assert (q["arc"].contexts[0], q["arc"].continuations, q["arc"].label) == (
        "Question: Which is a metal?\nAnswer:", [" wood", " iron", " glass", " salt"], 1)
    assert (q["boolq"].contexts[0], q["boolq"].continuations, q["boolq"].label) == ("Question: is iron a metal?\nAnswer:", [" no", " yes"], 1)
    assert q["hellaswag"].contexts[0] == "Cooking: He cuts. then he" and q["hellaswag"].continuations[0] == " eats. it"
    assert q["hellaswag"].keywords == ["ending1", "ending2", "ending3", "ending4"]
    assert q["winogrande"].contexts == ["Ann gave Bea food because Ann", "Ann gave Bea food because Bea"]
    assert q["winogrande"].continuations == [" was hungry."] * 2 and q["winogrande"].label == 1


def _one(record: dict):
    with tempfile.TemporaryDirectory() as folder:
        return read_questions(write_json(Path(folder) / "one.json", [record]))[1][0]


def test_extraction_follows_the_published_regex():
    arc = _one(ARC)  # 4 choices, but the published regex looks for answer1..answer5
    assert arc.keywords == ["answer1", "answer2", "answer3", "answer4", "answer5"]
    assert extract_answer("the correct answer is answer2, not answer1", arc.keywords) == 1  # the first match wins
    assert extract_answer("answer2 ... answer1", arc.keywords) == 1
    assert extract_answer("the correct answer is answer5 (or answer2)", arc.keywords) == 4  # answer5: wrong, not skipped
    assert extract_answer("The correct answer is Answer2", arc.keywords) is None  # case-sensitive: no match, so wrong
    assert extract_answer("I do not know", arc.keywords) is None
    boolq = _one(BOOLQ)
    assert extract_answer("the correct answer is false; true elsewhere", boolq.keywords) == 0
    assert extract_answer("that is untrue", boolq.keywords) == 1  # no word boundaries in the published regex
    assert extract_answer("TRUE", boolq.keywords) is None


def test_eval_choice_runs_both_protocols_on_the_published_files(tiny_llama, tmp_path):
    tasks = {name: str(write_json(tmp_path / f"{name}.json", real(name)[:3])) for name in ("boolq", "piqa", "arc_c")}
    report = evaluate_choice(str(tiny_llama), tasks, max_new_tokens=3, batch_size=4, device="cpu")
    assert {(r["task"], r["protocol"]) for r in report["results"]} == {(t, p) for t in tasks for p in ("loglikelihood", "generate")}
    assert all(r["format"] == "llm_adapters" and r["n"] == 3 and r["protocol"] in report["protocols"] for r in report["results"])


def test_instruct_reads_a_json_list_of_records(tmp_path):
    path = write_json(tmp_path / "train.json", [ARC, {**BOOLQ, "input": "Iron is a metal."}])
    assert read_examples(path) == [Example(ARC["instruction"], "", ARC["output"]),
                                   Example(BOOLQ["instruction"], "Iron is a metal.", BOOLQ["output"])]
    with pytest.raises(DomixError, match=r"train2.json record 2 has no 'output' field"):
        read_examples(write_json(tmp_path / "train2.json", [ARC, {"instruction": "q"}]))


@pytest.mark.parametrize("content, message", [
    (json.dumps(ARC, indent=4), r"bad.json holds one JSON object, not a list of records"),
    ('"a string"', r"bad.json holds one JSON string, not a list of records"),
    ('[{"instruction": "a",', r"bad.json:1:\d+ is not valid JSON"),
    (json.dumps([ARC, 3]), r"bad.json record 2 is a JSON number, not an object"),
    (json.dumps([{k: v for k, v in ARC.items() if k != "answer"}]), r"bad.json record 1: an instruction/output row has no 'answer'"),
    (json.dumps([ARC, {k: v for k, v in ARC.items() if k != "answer"}]), r"bad.json record 2 has no 'answer' field"),
    (json.dumps([ARC, {**ARC, "instruction": ARC["instruction"].replace(" Answer4: salt", "")}]),
     r"bad.json record 2: the instruction writes the options .* but its Answer format line names 4"),
    (json.dumps([{**ARC, "answer": "answer9"}]), r"bad.json record 1: the answer 'answer9' is not one of"),
    (json.dumps([{**ARC, "answer": "B"}]), r"bad.json record 1: answer 'B' is not an answer keyword"),
])
def test_bad_files_are_one_line_naming_file_and_record(tiny_llama, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DomixError, match=message) as err:
        read_questions(bad)
    assert "\n" not in str(err.value)
    capsys.readouterr()
    assert main(["eval-choice", str(tiny_llama), "--task", f"x={bad}", "--device", "cpu"]) == 2
    printed = capsys.readouterr().err.strip()
    assert "\n" not in printed and "Traceback" not in printed and re.search(message, printed)
