"""OpenAI's Batch API for the test server: files (``/v1/files``) and batches (``/v1/batches``), in memory.

A batch is in_progress until ``batch_completion_s`` after its creation; the first poll after that runs
every line through the server's live chat-completion path, so replies, usage, cached tokens and errors
match live calls, and writes an output file (the 200s) and an error file (the rest), both with purpose
``batch_output`` as OpenAI does. Poll and cancel answer what OpenAI's would, so the ``openai`` SDK works
against it unchanged.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devkit.openai_test_server import ChatCompletionRequest, Reply, TestServerConfig, error_body

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
COMPLETION_WINDOW_S = 24 * 3600
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
CANCELLED_ERROR = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}
STAMPS = ("finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")

RunItem = Callable[[bytes, str, str, bool], Awaitable[Reply]]
"""(request body, call id, batch id, answer with a 500) -> the reply, recorded like a live call."""
Guard = Callable[[Request], JSONResponse | None]
Handler = Callable[[Request], Awaitable[Response]]
BatchStatus = Literal["in_progress", "finalizing", "completed", "expired", "cancelled"]


class ApiError(Exception):
    """A request the API refuses, answered as OpenAI does: this status and ``error_body``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(str(self), "invalid_request_error"), self.status)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body. Parsed with the standard library's MIME
    parser because starlette's ``request.form()`` needs python-multipart, which the project lacks."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if message.get_content_type() != "multipart/form-data" or not message.is_multipart():
        raise ValueError(f"expected a multipart/form-data body, got {content_type!r}")
    return {
        str(part.get_param("name", header="content-disposition")): (
            part.get_filename(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


class BatchInputLine(BaseModel):
    """One request of a batch input file."""

    custom_id: str
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: dict[str, Any]


def batch_input_lines(content: bytes) -> list[BatchInputLine]:
    """Every line of a batch input file, checked as an upload is; ValueError naming the first bad line."""
    try:
        rows = content.decode().split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"the file is not UTF-8: {error}") from error
    if rows[-1] == "":
        rows.pop()  # the newline ending the last line
    lines: list[BatchInputLine] = []
    first_line_of: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        try:
            line = BatchInputLine.model_validate_json(row)
            ChatCompletionRequest.model_validate(line.body)
        except ValidationError as error:
            raise ValueError(f"line {number}: {error}") from error
        if line.custom_id in first_line_of:
            first = first_line_of[line.custom_id]
            raise ValueError(f"line {number}: custom_id {line.custom_id!r} is already used on line {first}")
        first_line_of[line.custom_id] = number
        lines.append(line)
    if not lines:
        raise ValueError("the file has no requests")
    return lines


def response_line(custom_id: str, reply: Reply) -> dict[str, Any]:
    """An output or error file line of an item that ran."""
    response = {"status_code": reply.status, "request_id": new_id("req_"), "body": reply.body}
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": None}


def not_run_line(custom_id: str, error: dict[str, str]) -> dict[str, Any]:
    """An error file line of an item the batch never ran (expired or cancelled)."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None, "error": error}


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class BatchJob:
    """One batch's state; ``stamps`` holds those of ``STAMPS`` that happened."""

    id: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_s: float
    total: int
    status: BatchStatus = "in_progress"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    stamps: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        created_at = int(self.created_s)
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": CHAT_COMPLETIONS,
            "errors": None,
            "input_file_id": self.input_file_id,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": created_at,
            "in_progress_at": created_at,
            "expires_at": created_at + COMPLETION_WINDOW_S,
            **{stamp: self.stamps.get(stamp) for stamp in STAMPS},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


class BatchCreateRequest(BaseModel):
    """The fields of ``POST /v1/batches`` this server acts on; others are accepted and ignored."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchStore:
    """The files and batches of one server; only touched from the server's event loop."""

    def __init__(self, config: TestServerConfig, run_item: RunItem) -> None:
        self.config = config
        self.run_item = run_item
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, BatchJob] = {}

    def add_file(self, filename: str, purpose: str, content: bytes) -> StoredFile:
        stored = StoredFile(new_id("file-"), filename, purpose, content, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def file(self, file_id: str) -> StoredFile:
        if file_id not in self.files:
            raise ApiError(404, f"No such File object: {file_id}")
        return self.files[file_id]

    def batch(self, batch_id: str) -> BatchJob:
        if batch_id not in self.batches:
            raise ApiError(404, f"No batch found with id '{batch_id}'.")
        return self.batches[batch_id]

    def create(self, request: BatchCreateRequest) -> BatchJob:
        if request.input_file_id not in self.files:
            raise ApiError(400, f"Invalid input_file_id: no file {request.input_file_id}.")
        input_file = self.files[request.input_file_id]
        if input_file.purpose != "batch":
            raise ApiError(400, f"The input file must have purpose 'batch', not '{input_file.purpose}'.")
        if request.endpoint != CHAT_COMPLETIONS:
            raise ApiError(400, f"Unsupported endpoint {request.endpoint!r}: only {CHAT_COMPLETIONS}.")
        if request.completion_window != COMPLETION_WINDOW:
            raise ApiError(400, f"Invalid completion_window {request.completion_window!r}: only '24h'.")
        job = BatchJob(
            id=new_id("batch_"),
            input_file_id=input_file.id,
            metadata=request.metadata,
            created_s=time.time(),
            total=len(batch_input_lines(input_file.content)),
        )
        self.batches[job.id] = job
        return job

    async def advance(self, job: BatchJob) -> None:
        """Run a batch whose completion time has come; a poll meanwhile sees it finalizing."""
        if job.status != "in_progress" or time.time() < job.created_s + self.config.batch_completion_s:
            return
        job.status = "finalizing"
        job.stamps["finalizing_at"] = int(time.time())
        lines = batch_input_lines(self.files[job.input_file_id].content)
        n_run = len(lines) // 2 if self.config.batch_expire else len(lines)
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, line in enumerate(lines[:n_run]):
            fail = line.custom_id in self.config.batch_fail_custom_ids
            reply = await self.run_item(json.dumps(line.body).encode(), f"{job.id}-{index}", job.id, fail)
            (outputs if reply.status == 200 else errors).append(response_line(line.custom_id, reply))
        errors += [not_run_line(line.custom_id, EXPIRED_ERROR) for line in lines[n_run:]]
        self._finish(job, outputs, errors, "expired" if self.config.batch_expire else "completed")

    async def cancel(self, job: BatchJob) -> None:
        """Cancel a batch that has not run; every item goes to the error file."""
        await self.advance(job)
        if job.status != "in_progress":
            raise ApiError(409, f"Cannot cancel a batch with status '{job.status}'.")
        job.stamps["cancelling_at"] = int(time.time())
        lines = batch_input_lines(self.files[job.input_file_id].content)
        self._finish(job, [], [not_run_line(line.custom_id, CANCELLED_ERROR) for line in lines], "cancelled")

    def _finish(
        self,
        job: BatchJob,
        outputs: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        status: Literal["completed", "expired", "cancelled"],
    ) -> None:
        job.output_file_id = self._write_output(job, "output", outputs)
        job.error_file_id = self._write_output(job, "error", errors)
        job.completed, job.failed = len(outputs), len(errors)
        job.status = status
        job.stamps[f"{status}_at"] = int(time.time())

    def _write_output(self, job: BatchJob, kind: str, lines: list[dict[str, Any]]) -> str | None:
        if not lines:
            return None
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return self.add_file(f"{job.id}_{kind}.jsonl", "batch_output", content).id


def list_limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, f"Invalid limit {raw!r}: expected an integer from 1 to 100.")
    return int(raw)


def batch_routes(config: TestServerConfig, unauthorised: Guard, run_item: RunItem) -> list[Route]:
    """The Batch API's routes, behind the server's bearer-token check."""
    store = BatchStore(config, run_item)

    def endpoint(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if (denied := unauthorised(request)) is not None:
                return denied
            try:
                return await handler(request)
            except ApiError as error:
                return error.response()

        return guarded

    async def create_file(request: Request) -> Response:
        try:
            fields = form_fields(request.headers.get("content-type", ""), await request.body())
        except ValueError as error:
            raise ApiError(400, str(error)) from error
        filename, content = fields.get("file", (None, b""))
        purpose = fields.get("purpose", (None, b""))[1].decode(errors="replace")
        if filename is None:
            raise ApiError(400, "Missing the 'file' field (a file upload).")
        if purpose not in UPLOAD_PURPOSES:
            raise ApiError(400, f"Invalid purpose {purpose!r}: expected one of {', '.join(UPLOAD_PURPOSES)}.")
        if purpose == "batch":
            try:
                batch_input_lines(content)
            except ValueError as error:
                raise ApiError(400, f"Invalid batch input file {filename!r}: {error}") from error
        return JSONResponse(store.add_file(filename, purpose, content).as_json())

    async def list_files(request: Request) -> Response:
        purpose = request.query_params.get("purpose")
        data = [f.as_json() for f in reversed(store.files.values()) if purpose in (None, f.purpose)]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    async def retrieve_file(request: Request) -> Response:
        return JSONResponse(store.file(request.path_params["file_id"]).as_json())

    async def file_content(request: Request) -> Response:
        content = store.file(request.path_params["file_id"]).content
        return Response(content, media_type="application/octet-stream")

    async def create_batch(request: Request) -> Response:
        try:
            body = BatchCreateRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise ApiError(400, f"invalid request: {error}") from error
        return JSONResponse(store.create(body).as_json())

    async def retrieve_batch(request: Request) -> Response:
        job = store.batch(request.path_params["batch_id"])
        await store.advance(job)
        return JSONResponse(job.as_json())

    async def list_batches(request: Request) -> Response:
        limit = list_limit(request)
        jobs = list(reversed(store.batches.values()))
        for job in jobs:
            await store.advance(job)
        if (after := request.query_params.get("after")) is not None:
            jobs = jobs[[job.id for job in jobs].index(store.batch(after).id) + 1 :]
        page = jobs[:limit]
        return JSONResponse(
            {
                "object": "list",
                "data": [job.as_json() for job in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(jobs) > limit,
            }
        )

    async def cancel_batch(request: Request) -> Response:
        job = store.batch(request.path_params["batch_id"])
        await store.cancel(job)
        return JSONResponse(job.as_json())

    return [
        Route("/v1/files", endpoint(create_file), methods=["POST"]),
        Route("/v1/files", endpoint(list_files), methods=["GET"]),
        Route("/v1/files/{file_id}", endpoint(retrieve_file), methods=["GET"]),
        Route("/v1/files/{file_id}/content", endpoint(file_content), methods=["GET"]),
        Route("/v1/batches", endpoint(create_batch), methods=["POST"]),
        Route("/v1/batches", endpoint(list_batches), methods=["GET"]),
        Route("/v1/batches/{batch_id}", endpoint(retrieve_batch), methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", endpoint(cancel_batch), methods=["POST"]),
    ]
