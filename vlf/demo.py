"""``vlf demo``: the whole loop on one machine, on tiny offline models, in minutes.

instructions -> 4 sampler models -> verifiable judge -> pairs (the paper's rule) -> one DPO job ->
evaluation of base and tuned -> report. The tiny models are random-init and only warmed up to answer
in the demo's format (one colour word, at chance), so the numbers show whether the loop teaches them
something, not anything about real models.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress

from devkit import kafka_local
from shared.contracts import events as ev
from shared.contracts import topics
from shared.ledger import Ledger
from shared.registry import Registry
from shared.settings import CommonSettings
from vlf.procfile import procfile

DEMO_NOTE = (
    "The models are tiny random-init VLMs built on this machine and warmed up only to answer with one "
    "colour word (at chance). Their text is meaningless beyond that; the point is that answers sampled, "
    "judged, paired and trained on make the tuned model better than its base. Point registry.yaml at "
    "real models (vLLM, OpenAI-compatible endpoints) and the same commands run the real pipeline."
)
SAMPLER_COUNT = 4


class DemoSize(BaseModel):
    train_images: int
    eval_images: int
    timeout_s: float


FULL = DemoSize(train_images=96, eval_images=80, timeout_s=900)
QUICK = DemoSize(train_images=96, eval_images=40, timeout_s=600)
SAMPLES_PER_MODEL = 2  # 4 models x 2 samples at temperature 1: enough right and wrong answers to pair
HELDOUT_FRACTION = "0.1"  # the paper holds out 0.5%; a 96-image demo needs more to measure anything


def demo_train_request(base_model: Path) -> ev.TrainRequest:
    """DPO plus a supervised term on the chosen answer (plain DPO makes greedy answers degenerate)."""
    return ev.TrainRequest(
        job_id=f"demo-{int(time.time())}",
        base_model=str(base_model),
        dataset=ev.DatasetSelector(judge_ids=["verify"], strategy="vlfeedback", split="train"),
        use_lora=False,
        hparams=ev.TrainHyperparams(
            beta=0.1,
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, 1.0],
            learning_rate=2e-3,
            warmup_ratio=0.1,
            weight_decay=0.0,
            num_train_epochs=10,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            bf16=False,
            gradient_checkpointing=False,
        ),
    )


def build_models(models_dir: Path, console: Console) -> list[Path]:
    """Four tiny Qwen2-VL models (different seeds), each warmed up on the answer format only: answers
    are random colour words, so each model answers with one colour word but at chance."""
    from devkit.tinymodels import build_tiny_vlm, warm_up_format
    from vlf.demo_data import format_warm_up_examples

    paths = []
    for seed in range(SAMPLER_COUNT):
        path = models_dir / f"tiny-qwen-{seed}"
        build_tiny_vlm("qwen2_vl", path, seed=seed)
        warm_up_format(path, format_warm_up_examples(256, seed), steps=120, seed=seed, lr=3e-3)
        paths.append(path)
    console.print(f"built {len(paths)} tiny models under {models_dir}")
    return paths


def write_registry(path: Path, model_paths: list[Path]) -> Registry:
    registry = {
        "models_per_instruction": SAMPLER_COUNT,
        "models": [
            {
                "id": f"tiny-qwen-{i}",
                "backend": "transformers",
                "model": str(p),
                "concurrency": 8,
                "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 8},
            }
            for i, p in enumerate(model_paths)
        ],
        "judges": [{"id": "verify", "kind": "verifiable"}],
    }
    path.write_text(yaml.safe_dump(registry, sort_keys=False))
    return Registry.load(path)


def wait_for(
    what: str, current: Callable[[], int], target: int, timeout_s: float, progress: Progress
) -> None:
    task = progress.add_task(what, total=target)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = current()
        progress.update(task, completed=value)
        if value >= target:
            return
        time.sleep(1)
    raise TimeoutError(f"demo stalled: {what} reached {current()} of {target} in {timeout_s:.0f}s")


class DemoResult(BaseModel):
    report: Path
    base_greedy_accuracy: float | None
    tuned_greedy_accuracy: float | None
    tuned_preference_accuracy: float | None


def eval_metric(ledger: Ledger, model_name: str, benchmark: str, metric: str) -> float | None:
    for result in ledger.iter_facts(ev.EvalResult, benchmark=benchmark):
        if result.model.name == model_name and result.status == "completed":
            return result.metrics.get(metric)
    return None


def run_demo(workdir: Path, size: DemoSize, console: Console) -> DemoResult:
    """Run the loop; every process the demo starts is stopped before it returns."""
    from vlf.demo_data import build_demo_set
    from vlf.status import kafka_numbers
    from vlf.submit import SubmitRecord, read_jsonl, submit_records

    workdir = workdir.resolve()
    if workdir.exists():
        subprocess.run(["rm", "-rf", str(workdir)], check=True)
    workdir.mkdir(parents=True)
    console.print(f"[bold]VLFeedback demo[/] in {workdir}\n{DEMO_NOTE}\n")
    broker = kafka_local.BrokerConfig()
    started_broker = not kafka_local.broker_running(broker)
    bootstrap = kafka_local.start_broker(broker)
    data = build_demo_set(workdir / "data", n_train=size.train_images, n_eval=size.eval_images, seed=0)
    models = build_models(workdir / "models", console)
    registry = write_registry(workdir / "registry.yaml", models)
    env = {
        "VLF_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "VLF_TOPIC_NAMESPACE": f"demo{int(time.time())}.",
        "VLF_LEDGER_URL": f"sqlite:///{workdir / 'ledger.db'}",
        "VLF_BLOB_URL": str(workdir / "blobs"),
        "VLF_REGISTRY_PATH": str(workdir / "registry.yaml"),
        "VLF_MAX_IN_FLIGHT": "1",
        "VLF_COMMIT_INTERVAL_S": "0.5",
        "VLF_ANNOTATOR_GATHER_TIMEOUT_S": "120",
        "VLF_PAIRS_HELDOUT_FRACTION": HELDOUT_FRACTION,
        "VLF_TRAINER_CHECKPOINT_DIR": str(workdir / "checkpoints"),
        "VLF_TRAINER_JOB_LOG_DIR": str(workdir / "jobs" / "train"),
        "VLF_EVALUATOR_JOB_LOG_DIR": str(workdir / "jobs" / "eval"),
        "VLF_EVALUATOR_AUTO_BENCHMARKS": '["greedy_accuracy", "preference_accuracy", "mme"]',
        "VLF_EVALUATOR_GREEDY_EVAL_PATH": str(data.greedy_eval),
        "VLF_EVALUATOR_MME_ROOT": str(data.mme_root),
        "VLF_EVALUATOR_MME_SUBTASKS": '["color", "existence"]',
        "VLF_EVALUATOR_MAX_NEW_TOKENS": "8",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    settings = CommonSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_namespace=env["VLF_TOPIC_NAMESPACE"],
        ledger_url=env["VLF_LEDGER_URL"],
        blob_url=env["VLF_BLOB_URL"],
        registry_path=Path(env["VLF_REGISTRY_PATH"]),
    )
    procfile_path = workdir / "Procfile"
    procfile_path.write_text(procfile(registry))
    log_path = workdir / "services.log"
    honcho = Path(sys.executable).with_name("honcho")
    with log_path.open("ab") as log:
        services = subprocess.Popen(
            [str(honcho), "-f", str(procfile_path), "-d", str(Path.cwd()), "start"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    console.print(f"services started with honcho (logs: {log_path})")
    ledger = Ledger(settings.ledger_url)
    ledger.migrate()
    try:
        records = [
            (where, record.model_copy(update={"samples_per_model": SAMPLES_PER_MODEL}))
            if isinstance(record, SubmitRecord)
            else (where, record)
            for where, record in read_jsonl(data.instructions)
        ]
        outcome = submit_records(
            records, base_dir=data.instructions.parent, settings=settings, registry=registry
        )
        n = len(outcome.published)
        console.print(
            f"submitted {n} instructions, each answered {SAMPLES_PER_MODEL} times by {SAMPLER_COUNT} models"
        )
        with Progress(console=console) as progress:
            wait_for(
                "answers", lambda: ledger.count(ev.Response), n * SAMPLER_COUNT, size.timeout_s, progress
            )
            wait_for("ratings", lambda: ledger.count(ev.Annotation), n, size.timeout_s, progress)
            wait_for(
                "pairs built", lambda: int(_lag(kafka_numbers, settings) == 0), 1, size.timeout_s, progress
            )
            pairs = ledger.count(ev.Pair)
            console.print(f"{pairs} preference pairs by the paper's rule")
            request = demo_train_request(models[0])
            from shared.runtime.admin import EventPublisher

            with EventPublisher(settings) as publisher:
                publisher.publish([request])
            wait_for("DPO training", lambda: ledger.count(ev.Checkpoint), 1, size.timeout_s, progress)
            expected = 3 + 2  # tuned: greedy, preference, mme; base: greedy, mme
            wait_for("evaluation", lambda: ledger.count(ev.EvalResult), expected, size.timeout_s, progress)
        from vlf.report.data import gather_report, read_train_progress
        from vlf.report.render import write_report

        dlq_sizes, _lag_by_group = kafka_numbers(settings)
        progress = read_train_progress(settings)
        data = gather_report(ledger, progress=progress, dlq_sizes=dlq_sizes, demo_note=True)
        report = write_report(data, workdir / "report.html")
    finally:
        os.killpg(services.pid, signal.SIGTERM)
        try:
            services.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(services.pid, signal.SIGKILL)
        if started_broker:
            kafka_local.stop_broker(broker)
    result = DemoResult(
        report=report,
        base_greedy_accuracy=eval_metric(ledger, "base", "greedy_accuracy", "accuracy"),
        tuned_greedy_accuracy=eval_metric(ledger, "tuned", "greedy_accuracy", "accuracy"),
        tuned_preference_accuracy=eval_metric(ledger, "tuned", "preference_accuracy", "accuracy"),
    )
    ledger.close()
    return result


def _lag(kafka_numbers: Callable, settings: CommonSettings) -> int:
    """Unconsumed annotations of the pair builder (0 once every rating has been paired)."""
    _dlq, lag = kafka_numbers(settings)
    return lag.get(topics.PAIR_BUILDER_GROUP, 1)
