"""``vlf report`` end to end: a real SQLite ledger in, one self-contained HTML file out, whose tables
hold the ledger's numbers and which a real headless Chromium renders to a non-blank page."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.registry import JudgeEntry
from shared.runtime.admin import EventPublisher
from shared.settings import CommonSettings
from tests import factories
from vlf.cli.report_cmd import app as report_app
from vlf.report.data import gather_report, read_train_progress
from vlf.report.render import write_report

CHROMIUM = Path("/usr/bin/chromium")
# model -> per instruction (helpfulness, faithfulness, ethics); 4 x the first triple, 2 x the second
RATINGS = {"m-good": ((5, 4, 5), (4, 4, 5)), "m-bad": ((2, 1, 5), (1, 1, 5))}
MARGINS = (3.0, 3.0, 3.0, 3.0, 2.67, 2.67)
BASE = {
    "mme": {"perception": 1440.5, "cognition": 362.5, "total": 1803.0, "OCR": 110.0},
    "mmhal": {"average": 2.89, "counting": 2.5},
    "mmvet": {"total": 45.7, "rec": 50.1, "math": 20.0},
}
TUNED = {
    "mme": {"perception": 1539.6, "cognition": 397.1, "total": 1936.7, "OCR": 125.0},
    "mmhal": {"average": 3.02, "counting": 2.75},
    "mmvet": {"total": 49.9, "rec": 55.3, "math": 19.5},
}

# base answered none of its 6 MME questions with yes or no (planted; its scores are not recomputed)
MME_DETAILS = {
    "base": {"per_subtask": {"OCR": {"images": 3, "other_answers": 6}}},
    "tuned": {"per_subtask": {"OCR": {"images": 3, "other_answers": 1}}},
}


class CellsById(HTMLParser):
    """Text of every element that has an id (the report puts ids on the cells that hold numbers)."""

    VOID = frozenset({"meta", "br", "img", "link", "hr", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self._stack: list[tuple[str, str | None, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in self.VOID:
            self._stack.append((tag, dict(attrs).get("id"), []))

    def handle_data(self, data: str) -> None:
        for _tag, _ident, parts in self._stack:
            parts.append(data)

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            open_tag, ident, parts = self._stack.pop()
            if ident:
                self.cells[ident] = " ".join("".join(parts).split())
            if open_tag == tag:
                return


def _fill_ledger(ledger: Ledger) -> None:
    facts: list[ev.Event] = []
    for n in range(6):
        inst = factories.instruction(n)
        triples = {model: pair[0] if n < 4 else pair[1] for model, pair in RATINGS.items()}
        annotation = factories.annotation(inst, triples)
        if n < 2:
            annotation = annotation.model_copy(update={"self_agreement": (0.9, 0.8)[n]})
        facts += [inst, *(factories.response(inst, model) for model in RATINGS), annotation]
        facts.append(
            ev.Pair(
                pair_id=f"pair-{n}",
                instruction_id=inst.instruction_id,
                prompt=inst.prompt,
                image_uris=[],
                chosen=ev.PairSide(response_id="a", model_id="m-good", text="good", score=4.67),
                rejected=ev.PairSide(response_id="b", model_id="m-bad", text="bad", score=4.67 - MARGINS[n]),
                margin=MARGINS[n],
                strategy="vlfeedback",
                judge_ids=["judge"],
                split="train",
            )
        )
    for name, benchmarks in (("base", BASE), ("tuned", TUNED)):
        for benchmark, metrics in benchmarks.items():
            facts.append(
                ev.EvalResult(
                    result_id=f"{name}-{benchmark}",
                    eval_id=f"eval-{name}",
                    model=ev.ModelRef(name=name, base_model="tiny-qwen2-vl"),
                    benchmark=benchmark,
                    status="completed",
                    metrics=metrics,
                    details=MME_DETAILS[name] if benchmark == "mme" else {},
                )
            )
    facts.append(  # a failed run must not show up in the table
        ev.EvalResult(
            result_id="tuned-mme-failed",
            eval_id="eval-tuned-old",
            model=ev.ModelRef(name="tuned", base_model="tiny-qwen2-vl"),
            benchmark="mme",
            status="failed",
            error="BenchmarkFormatError: broken file",
        )
    )
    ledger.record(*facts)
    for n, cached in enumerate((0, 1536)):
        ledger.save_judge_reply(
            f"call-{n}",
            instruction_id=f"inst-{n}",
            judge_id="gpt-4o",
            purpose="pass1",
            raw_reply="...",
            prompt_tokens=2000,
            cached_prompt_tokens=cached,
            completion_tokens=300,
            cost=JUDGE.call_cost(2000, cached, 300),
        )
    ledger.save_judge_reply(  # the same judge through the Batch API
        "call-bulk",
        instruction_id="inst-0",
        judge_id="gpt-4o-bulk",
        purpose="pass1",
        raw_reply="...",
        prompt_tokens=2000,
        cached_prompt_tokens=0,
        completion_tokens=300,
        cost=JUDGE.call_cost(2000, 0, 300, batch=True),
        batch_id="batch_1",
    )
    ledger.create_job("dpo-1", "train", {})
    final = _progress(20, status="completed")
    ledger.update_job("dpo-1", status="completed", progress=final.model_dump(mode="json"))


JUDGE = JudgeEntry(
    id="gpt-4o",
    model="gpt-4o",
    api_key_env="OPENAI_API_KEY",
    price_per_1k_input=0.0025,
    price_per_1k_cached_input=0.00125,
    price_per_1k_output=0.01,
)


def _progress(step: int, status: str = "running") -> ev.TrainProgress:
    return ev.TrainProgress(
        job_id="dpo-1",
        status=status,
        step=step,
        total_steps=20,
        loss=0.69 - step * 0.014,
        reward_margin=step * 0.065,
        reward_accuracy=min(0.5 + step * 0.02, 0.9),
    )


def _cells(html: str) -> dict[str, str]:
    parser = CellsById()
    parser.feed(html)
    return parser.cells


def _screenshot(html_path: Path, tmp: Path) -> Image.Image:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: install it with `bash tests/install-debian-packages.sh`"
    )
    png = tmp / "report.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            f"--screenshot={png}",
            "--window-size=1280,2000",
            html_path.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Image.open(png).convert("RGB")


def test_report_holds_the_ledger_numbers_and_renders(ledger_url, tmp_path):
    ledger = Ledger(ledger_url)
    ledger.migrate()
    _fill_ledger(ledger)
    data = gather_report(ledger, progress=[_progress(s) for s in (5, 10, 15)], demo_note=True)
    out = write_report(data, tmp_path / "out" / "report.html")
    html = out.read_text()

    assert (
        "<script" not in html
        and "<link" not in html
        and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    ), "the report must be self-contained"
    cells = _cells(html)
    assert cells["count-instructions"] == "6" and cells["count-pairs"] == "6"
    assert cells["count-responses"] == "12" and cells["count-annotations"] == "6"
    assert "tiny, randomly initialised demo models" in cells["demo-note"]
    # m-good helpfulness: 5,5,5,5,4,4; m-bad faithfulness: 1 x6; m-bad ethics: 5 x6
    assert [cells[f"hist-m-good-helpfulness-{r}"] for r in range(1, 6)] == ["0", "0", "0", "2", "4"]
    assert cells["mean-m-good-helpfulness"] == "4.67"
    assert cells["mean-m-bad-helpfulness"] == "1.67"
    assert (
        cells["hist-m-bad-visual-faithfulness-1"] == "6" and cells["mean-m-bad-visual-faithfulness"] == "1.00"
    )
    assert cells["mean-m-bad-ethical-considerations"] == "5.00"
    # position 0 is always m-good: (5+4+5)*4 + (4+4+5)*2 = 82 over 18 ratings
    assert cells["bias-0"] == f"{82 / 18:.2f}" and cells["bias-1"] == f"{(8 * 4 + 7 * 2) / 18:.2f}"
    assert cells["self-agreement"] == "0.850"
    assert cells["margin-bin-5"] == "2" and cells["margin-bin-6"] == "4"  # [2.5, 3) and [3, 3.5)
    # GPT-4o's prices: 2,000 + 464 full-price prompt tokens, 1,536 cached, 600 completion tokens
    assert cells["spend-gpt-4o-input"] == f"{2464 * 0.0025 / 1000:.4f}"
    assert cells["spend-gpt-4o-cached-input"] == f"{1536 * 0.00125 / 1000:.4f}"
    assert cells["spend-gpt-4o-output"] == f"{600 * 0.01 / 1000:.4f}"
    assert cells["spend-gpt-4o"] == f"{(2464 * 0.0025 + 1536 * 0.00125 + 6) / 1000:.4f}"
    assert cells["spend-gpt-4o-batch"] == "0.0000"
    assert cells["spend-gpt-4o-bulk"] == cells["spend-gpt-4o-bulk-batch"] == f"{(5 + 3) / 1000 / 2:.4f}"
    assert cells["train-status-dpo-1"] == "completed" and cells["train-step-dpo-1"] == "20"
    assert cells["train-loss-dpo-1"] == f"{0.69 - 20 * 0.014:.4f}"
    assert cells["eval-base-mme_perception"] == "1440.5" and cells["eval-tuned-mme_perception"] == "1539.6"
    assert cells["eval-change-mme_perception"] == "+6.9%"
    assert cells["eval-change-mme_cognition"] == "+9.5%"
    assert cells["eval-base-mmhal_score"] == "2.89" and cells["eval-tuned-mmhal_score"] == "3.02"
    assert cells["eval-base-mmvet_total"] == "45.7" and cells["eval-change-mmvet_total"] == "+9.2%"
    assert (cells["part-base-mme-ocr"], cells["part-tuned-mme-ocr"], cells["part-change-mme-ocr"]) == (
        "110.00",
        "125.00",
        "+15.00",
    )
    assert cells["part-change-mmhal-counting"] == "+0.25"
    assert cells["part-tuned-mmvet-rec"] == "55.30" and cells["part-change-mmvet-math"] == "-0.50"
    assert "part-base-mmvet-ocr" not in cells, "a part neither model has is not shown"
    assert "answered none of its 6 MME questions with yes or no" in cells["mme-without-yes-no-base"]
    assert "mme-without-yes-no-tuned" not in cells
    assert html.count("<polyline") == 3, "loss, reward margin and reward accuracy curves"
    assert html.count("<svg") >= 3 + 1 + 1 + 3 + 3  # ratings, bias, margins, training, 3 eval metrics

    image = _screenshot(out, tmp_path)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the page rendered as (nearly) one colour"
    pixels = image.width * image.height
    non_white = sum(count for count, rgb in colours if min(rgb) < 240)
    assert non_white / pixels > 0.03, f"only {non_white / pixels:.1%} of the page is not white"


def test_report_shows_how_far_two_judges_agree(ledger_url, tmp_path):
    ledger = Ledger(ledger_url)
    ledger.migrate()
    one, two = factories.instruction(1), factories.instruction(2)
    ledger.record(
        # helpfulness 5,1,4,2 against 5,1,4,2: kappa 1; ethics always 5 for the first judge: kappa 0
        factories.annotation(one, {"a": (5, 5, 5), "b": (1, 1, 5)}, judge_id="gpt-4o"),
        factories.annotation(two, {"a": (4, 4, 5), "b": (2, 2, 5)}, judge_id="gpt-4o"),
        factories.annotation(one, {"a": (5, 5, 4), "b": (1, 1, 5)}, judge_id="human review"),
        # means: gpt-4o a 13/3 > b 3; human b 10/3 > a 3: the judges order instruction two apart
        factories.annotation(two, {"a": (4, 1, 4), "b": (2, 3, 5)}, judge_id="human review"),
    )

    html = write_report(gather_report(ledger), tmp_path / "report.html").read_text()
    ledger.close()

    cells = _cells(html)
    assert cells["kappa-gpt-4o-human-review-helpfulness"] == "1.000"
    assert cells["kappa-gpt-4o-human-review-ethical-considerations"] == "0.000"
    assert cells["order-agreed-gpt-4o-human-review"] == "0.500"


def test_report_command_reads_training_curves_from_kafka(kafka_bootstrap, namespace, ledger_url, tmp_path):
    settings = CommonSettings(kafka_bootstrap_servers=kafka_bootstrap, topic_namespace=namespace)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    _fill_ledger(ledger)
    with EventPublisher(settings) as publisher:
        publisher.publish([_progress(s) for s in (5, 10, 15, 20)])
    assert [p.step for p in read_train_progress(settings)] == [5, 10, 15, 20]

    out = tmp_path / "report.html"
    env = {"VLF_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "VLF_TOPIC_NAMESPACE": namespace}
    result = CliRunner().invoke(report_app, ["--out", str(out)], env={**env, "VLF_LEDGER_URL": ledger_url})
    assert result.exit_code == 0, result.output
    html = out.read_text()
    cells = _cells(html)
    assert cells[f"dlq-{namespace}vlf.instructions.v1.dlq".lower()] == "0"
    assert "demo-note" not in cells
    assert html.count('<circle cx="') == 3 * 4, "four progress points on each of the three curves"

    ledger_only = CliRunner().invoke(
        report_app, ["--out", str(out), "--no-kafka"], env={"VLF_LEDGER_URL": ledger_url}
    )
    assert ledger_only.exit_code == 0, ledger_only.output
    assert out.read_text().count('<circle cx="') == 3, "from the ledger alone: the last progress only"
