"""``vlf eval --local``: one evaluation in this process, no broker and no evaluator service.

For a quick number on a laptop or in a notebook's terminal, the job runs exactly as the evaluator's
job process runs it (same benchmarks, caches and result records in the ledger); only the results
are not published on a topic, since nothing listens.
"""

from __future__ import annotations

from contextlib import closing

from services.evaluator.handler import check_request, queue_job
from services.evaluator.job import JobContext, run_job
from services.evaluator.settings import EvaluatorSettings
from shared.blobs.store import BlobStore
from shared.contracts import events as ev
from shared.ledger import Ledger
from shared.settings import CommonSettings


def evaluate_locally(
    request: ev.EvalRequest, common: CommonSettings, settings: EvaluatorSettings
) -> list[ev.EvalResult]:
    """Run every benchmark of ``request`` now; returns its results, as recorded in the ledger.

    A request no run can serve (unknown benchmark, missing adapter or endpoint) raises the
    evaluator's PermanentError before anything is recorded."""
    with closing(Ledger(common.ledger_url)) as ledger:
        ledger.migrate()
        check_request(request, common.registry_path)
        queue_job(ledger, request)
        ctx = JobContext(
            ledger=ledger,
            blobs=BlobStore(common.blob_url),
            settings=settings,
            registry_path=common.registry_path,
            publish=lambda _events: None,
        )
        run_job(request.eval_id, ctx)
        return list(ledger.iter_facts(ev.EvalResult, eval_id=request.eval_id))
