"""Judge tokens and calls per instruction: ``all_in_one`` against ``per_aspect`` (issue 4).

Both modes rate the same 50 instructions with 4 answers each through the annotator's real code path
(``services.annotator.handler.rate`` with the OpenAI HTTP backend, a SQLite ledger and the blob store)
against the OpenAI-compatible test server, whose token rule is fixed (prompt tokens = words of every
message text + 85 per image; completion tokens = words of the reply), so the figures repeat exactly.

Run: ``python -m bench.bench_judge_tokens [--instructions 50] [--answers 4]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import typer
from prometheus_client import CollectorRegistry

from devkit.openai_test_server import TestServerConfig, serve_in_thread
from services.annotator.handler import AnnotatorContext, rate
from services.annotator.metrics import JudgeMetrics
from services.annotator.settings import AnnotatorSettings
from shared.backends.build import build_backend
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import JudgeSpend, Ledger
from shared.registry import JudgeEntry, Registry
from tests.integration.judge_responder import judge_responder
from tests.integration.pipeline_helpers import COLOURS, png


def dataset(count: int, answers: int, blobs: BlobStore) -> list[tuple[ev.Instruction, list[ev.Response]]]:
    """Instructions with answers of varied length, each with its own image, the same for every mode."""
    models = [f"m{i}" for i in range(answers)]
    out = []
    for n in range(count):
        colour = list(COLOURS)[n % len(COLOURS)]
        inst = ev.Instruction(
            instruction_id=f"{n:08x}-judge-bench",
            prompt=f"Describe the picture in detail and say what colour the square is ({n}).",
            image_uris=[blobs.put(png(colour, size=32 + n), suffix=".png")],  # an image of its own
            models=models,
        )
        responses = [
            ev.Response(
                response_id=f"{inst.instruction_id}-{m}",
                instruction=inst,
                model_id=m,
                sampling={"temperature": 0.7},
                text=f"The square is {colour}. " + "It sits on a plain background. " * (1 + (n + i) % 4),
                status="answered",
                finish_reason="stop",
            )
            for i, m in enumerate(models)
        ]
        out.append((inst, responses))
    return out


def rate_all(judge: JudgeEntry, db: Path, blobs: Path, data: list) -> tuple[list[ev.Annotation], JudgeSpend]:
    """Rate every instruction through the annotator's handler; the annotations and the spend."""
    ledger = Ledger(f"sqlite:///{db}")
    ledger.migrate()
    backend = build_backend(judge)
    ctx = AnnotatorContext(
        judge=judge,
        registry=Registry(judges=[judge]),
        backend=backend,
        ledger=ledger,
        blobs=BlobStore(str(blobs)),
        settings=AnnotatorSettings(judge_id=judge.id),
        metrics=JudgeMetrics(CollectorRegistry()),
    )
    try:
        annotations = [rate(inst, responses, ctx) for inst, responses in data]
        assert all(a is not None for a in annotations)
        return annotations, ledger.judge_spend()[judge.id]
    finally:
        backend.close()
        ledger.close()


def measure(mode: str, base_url: str, work: Path, data: list) -> dict[str, float]:
    judge = JudgeEntry(id=f"judge-{mode.replace('_', '-')}", model="test-model", base_url=base_url, mode=mode)
    annotations, _spend = rate_all(judge, work / f"{mode}.db", work / "blobs", data)
    totals = {
        "calls": sum(a.usage.calls for a in annotations),
        "prompt_tokens": sum(a.usage.prompt_tokens for a in annotations),
        "completion_tokens": sum(a.usage.completion_tokens for a in annotations),
    }
    return {name: value / len(data) for name, value in totals.items()}


def main(
    instructions: int = typer.Option(50, help="Instructions rated by each mode."),
    answers: int = typer.Option(4, help="Answers per instruction."),
) -> None:
    """Print per-instruction calls and tokens of both modes and per_aspect / all_in_one."""
    server = serve_in_thread(TestServerConfig(responder=judge_responder))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            data = dataset(instructions, answers, BlobStore(str(work / "blobs")))
            results = {
                mode: measure(mode, server.base_url, work, data) for mode in ("all_in_one", "per_aspect")
            }
        served = httpx.get(server.root_url + "/_stats").json()["total"]
    finally:
        server.stop()
    print(f"{instructions} instructions x {answers} answers, test-server token rule; {served} calls served")
    print(
        f"{'mode':>11} {'calls/inst':>10} {'prompt tok/inst':>15} "
        f"{'completion tok/inst':>19} {'total/inst':>10}"
    )
    for mode, r in results.items():
        total = r["prompt_tokens"] + r["completion_tokens"]
        print(
            f"{mode:>11} {r['calls']:>10.2f} {r['prompt_tokens']:>15.1f} "
            f"{r['completion_tokens']:>19.1f} {total:>10.1f}"
        )
    one, per = results["all_in_one"], results["per_aspect"]
    ratio = (per["prompt_tokens"] + per["completion_tokens"]) / (
        one["prompt_tokens"] + one["completion_tokens"]
    )
    print(f"per_aspect / all_in_one: calls x{per['calls'] / one['calls']:.2f}, tokens x{ratio:.2f}")


if __name__ == "__main__":
    typer.run(main)
