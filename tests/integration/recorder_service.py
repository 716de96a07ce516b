"""A minimal real service for testing the runtime: records every event in the ledger and answers each
instruction with an echo response. Run as ``python -m tests.integration.recorder_service``.

Test knobs (environment): RECORDER_KILL_AFTER=N SIGKILLs the process right after the N-th ledger write
(before its outputs are published or its offset committed); RECORDER_DELAY_S slows each message;
RECORDER_ASYNC=1 runs a coroutine handler on an event loop (``AsyncLanePool``) instead of threads;
RECORDER_BACKGROUND_FAILS_AFTER_S=S gives it a background task that raises after S seconds;
RECORDER_TRACE=PATH appends "start PID KEY" when a message reaches the handler and "done PID KEY"
after its ledger write (so a test sees what ran, where and how often); RECORDER_CRASH_ON=ID makes the
handler raise an unclassified error (a bug) on the instruction with that id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

from shared.contracts import events as ev
from shared.contracts.topics import ALL_TOPICS, RESPONSES
from shared.ledger import Ledger
from shared.runtime.event_loop import LoopThread
from shared.runtime.kafka_runtime import KafkaRuntime, ServiceDefinition
from shared.runtime.service import serve
from shared.settings import CommonSettings
from tests import factories


class Recorder:
    def __init__(
        self,
        ledger: Ledger,
        kill_after: int,
        delay_s: float,
        trace: Path | None = None,
        crash_on: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.kill_after = kill_after
        self.delay_s = delay_s
        self.trace = trace
        self.crash_on = crash_on
        self.writes = 0
        self.lock = threading.Lock()

    def handle(self, event: ev.Event) -> list[ev.Event]:
        self.started(event)
        time.sleep(self.delay_s)
        return self.record(event)

    async def handle_async(self, event: ev.Event) -> list[ev.Event]:
        self.started(event)
        await asyncio.sleep(self.delay_s)
        return await asyncio.to_thread(self.record, event)

    def started(self, event: ev.Event) -> None:
        self.note("start", event)
        if self.crash_on is not None and getattr(event, "instruction_id", None) == self.crash_on:
            raise RuntimeError(f"the recorder's handler broke on {self.crash_on}")

    def note(self, what: str, event: ev.Event) -> None:
        if self.trace is None:
            return
        key = getattr(event, "instruction_id", None) or getattr(event, "job_id", None) or "?"
        with self.lock, self.trace.open("a") as out:
            out.write(f"{what} {os.getpid()} {key}\n")

    def record(self, event: ev.Event) -> list[ev.Event]:
        match event:
            case ev.TrainRequest() | ev.EvalRequest():
                kind = "train" if isinstance(event, ev.TrainRequest) else "eval"
                job_id = event.job_id if isinstance(event, ev.TrainRequest) else event.eval_id
                self.ledger.create_job(job_id, kind, event.model_dump(mode="json"))
            case ev.TrainProgress():
                self.ledger.create_job(event.job_id, "train", {})
                self.ledger.update_job(
                    event.job_id, status=event.status, progress=event.model_dump(mode="json")
                )
            case _:
                self.ledger.record(event)
        with self.lock:
            self.writes += 1
            if self.writes == self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        self.note("done", event)
        if isinstance(event, ev.Instruction):
            return [factories.echo_response(event)]
        return []


def failing_background(after_s: float, runtime: KafkaRuntime, stopped: threading.Event) -> None:
    if not stopped.wait(after_s):
        raise RuntimeError("the recorder's background task broke")


def main() -> None:
    common = CommonSettings()
    ledger = Ledger(common.ledger_url)
    ledger.migrate()
    recorder = Recorder(
        ledger,
        int(os.environ.get("RECORDER_KILL_AFTER", "0")),
        float(os.environ.get("RECORDER_DELAY_S", "0")),
        Path(os.environ["RECORDER_TRACE"]) if os.environ.get("RECORDER_TRACE") else None,
        os.environ.get("RECORDER_CRASH_ON") or None,
    )
    topics = os.environ.get("RECORDER_TOPICS", ",".join(t.name for t in ALL_TOPICS)).split(",")
    loop = LoopThread("recorder-loop") if os.environ.get("RECORDER_ASYNC") else None
    handler = recorder.handle if loop is None else recorder.handle_async
    definition = ServiceDefinition(
        name="recorder",
        group_id=os.environ.get("RECORDER_GROUP", "vlf-recorder"),
        routes={name: handler for name in topics},
        produces=(RESPONSES,),
        ready_checks={"ledger": ledger.ping},
        loop=loop,
    )
    fails_after = os.environ.get("RECORDER_BACKGROUND_FAILS_AFTER_S")
    background = [partial(failing_background, float(fails_after))] if fails_after else []
    serve(definition, common, background=background)


if __name__ == "__main__":
    main()
