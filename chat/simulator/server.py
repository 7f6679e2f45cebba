"""The built-in OpenAI-compatible test upstream: ``Simulator``, an asyncio server with its
routes, counters and faults.

It is a test double for a model server (vLLM, llama-server, OpenAI), used by the demo default
slot, the tests and the benchmarks; never presented to users as a model. The package's other
modules: ``config.py`` (how the model behaves), ``planning.py`` (the answer and its bytes),
``http.py`` (HTTP/1.1 on asyncio streams), ``thread.py`` (a Simulator for synchronous code).

Protocol sources:
- OpenAI API reference, "Chat Completions", "Completions" and "Models" (the endpoints served).
- WHATWG HTML, "Server-sent events": ``:`` comments (the keep-alive pings).
- RFC 9112 (HTTP/1.1): §6.3 close-delimited bodies (``SimConfig.close_delimited``).
- llama.cpp ``tools/server/README.md``, ``GET /health``: the 503 "Loading model" body.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from chat.simulator.config import DEFAULT_REPLAY_DIR, SimConfig
from chat.simulator.http import (
    Conn,
    Request,
    RequestError,
    dumps,
    hang_up,
    read_request,
    response_head,
    send_json,
)
from chat.simulator.planning import (
    HOLE_JSON,
    Plan,
    as_chat_request,
    complete_body,
    content_parts,
    embeddings_body,
    event,
    plan_answer,
    prompt_words,
    response_body,
    responses_steps,
    stream_body,
)

logger = logging.getLogger(__name__)

Stats = dict[str, Any]

HISTORY_SIZE = 1000  # per-request records and cancel times kept for /sim/stats

_LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
_MALFORMED = b'data: {"choices":[{"delta":{"content":"unterminated\n\n'
_SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]


def _fault_steps(cfg: SimConfig) -> frozenset[int]:
    """The step counts after which some ``*_after`` fault of ``cfg`` fires."""
    afters = (
        cfg.drop_after,
        cfg.error_after,
        cfg.inject_after,
        cfg.malformed_after,
        cfg.stall_after,
    )
    return frozenset(after for after in afters if after is not None)


def _envelope(message: str, type_: str = "invalid_request_error", code: Any = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class Simulator:
    """An OpenAI-compatible model server double on ``host:port`` (0 = any free port).

    Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (stream or not),
    ``POST /v1/embeddings`` (``planning.embeddings_body``), ``GET /v1/models``, ``GET
    /health``; and for tests ``GET /sim/stats``, ``GET|POST /sim/config`` (fields merged into
    the defaults), ``POST /sim/reset``. Errors use OpenAI's envelope ``{"error": {"message",
    "type", "param", "code"}}``.

    Counters (``stats``): ``requests`` counts generation requests (the two POST endpoints, even
    when refused); ``completed`` answers fully written; ``cancelled`` answers whose client left
    first; ``active`` answers in flight; ``embeddings`` embedding requests. Times are
    ``time.monotonic()`` seconds.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: SimConfig | None = None,
        models: list[str] | None = None,
        replay_dir: Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._defaults = dataclasses.replace(config) if config else SimConfig()
        self.config = dataclasses.replace(self._defaults)
        self.models = list(models) if models else ["sim"]
        if replay_dir is None and DEFAULT_REPLAY_DIR.is_dir():
            replay_dir = DEFAULT_REPLAY_DIR
        self.replay_dir = replay_dir
        self.base_url = ""
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._created = int(time.time())
        self._cold_from = time.monotonic()
        self._fail_left = self.config.fail_requests
        self._active = 0
        self._zero()
        self._routes: dict[
            tuple[str, str], Callable[[Conn, Request], Coroutine[Any, Any, None]]
        ] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/tokenize"): self._tokenize,
            ("POST", "/v1/responses"): self._responses,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/props"): self._props,
            ("POST", "/api/show"): self._show,
            ("GET", "/sim/stats"): self._stats,
            ("GET", "/sim/config"): self._get_config,
            ("POST", "/sim/config"): self._set_config,
            ("POST", "/sim/reset"): self._reset,
        }

    def _zero(self) -> None:
        self._counts = {
            "requests": 0,
            "streams_started": 0,
            "completed": 0,
            "cancelled": 0,
            "health_checks": 0,
            "embeddings": 0,
            "tokenize": 0,
        }
        self._cancel_times: deque[float] = deque(maxlen=HISTORY_SIZE)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self._last_request: Any = None

    async def start(self) -> str:
        """Listen; return the base URL (``http://127.0.0.1:PORT``; OpenAI's base_url adds /v1)."""
        # A deep backlog: benchmarks open 1,000 connections at once.
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=4096)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{port}"
        self._cold_from = time.monotonic()
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and cancel every connection, streams in flight included."""
        if self._server is None:
            return
        self._server.close()
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        # writer.close() closes a socket on the loop's next turns (connection_lost is called
        # soon, not now): let that happen before a caller closes the loop, or the sockets leak.
        for _ in range(3):
            await asyncio.sleep(0)
        self._server, self._stopping = None, False

    @property
    def stats(self) -> Stats:
        """A snapshot: ``requests``, ``streams_started``, ``completed``, ``cancelled``, ``active``,
        ``health_checks`` (``GET /health`` and ``GET /v1/models``),
        ``cancel_times`` (monotonic s), ``last_request`` (last JSON body or None),
        ``last_parts`` (what its messages carried: ``content_parts``) and
        ``history``: per request ``{"id", "path", "stream", "started_at", "ended_at",
        "cancelled_at", "outcome"}`` with outcome active|completed|cancelled|error|dropped
        (the last ``HISTORY_SIZE`` requests)."""
        return {
            **self._counts,
            "active": self._active,
            "cancel_times": list(self._cancel_times),
            "last_request": self._last_request,
            "last_parts": content_parts(self._last_request),
            "history": [dict(record) for record in self._history],
        }

    def configure(self, **fields: Any) -> SimConfig:
        """Merge ``fields`` into the defaults (``ValueError`` on a bad field). Setting
        ``cold_boot_s`` starts a new cold-boot period now."""
        self.config = self.config.merged(fields)
        if "cold_boot_s" in fields:
            self._cold_from = time.monotonic()
        if "fail_requests" in fields:
            self._fail_left = self.config.fail_requests
        return self.config

    def reset(self) -> None:
        """Back to the constructor's config and zero counters, as if just started."""
        self.config = dataclasses.replace(self._defaults)
        self._cold_from = time.monotonic()
        self._fail_left = self.config.fail_requests
        self._zero()

    async def wait_for(self, predicate: Callable[[Stats], bool], timeout_s: float = 1.0) -> Stats:
        """Poll ``stats`` every 10 ms until ``predicate`` holds, else ``TimeoutError``."""
        deadline = time.monotonic() + timeout_s
        while not predicate(stats := self.stats):
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator stats never matched: {self._counts}")
            await asyncio.sleep(0.01)
        return stats

    def _is_cold(self, cfg: SimConfig) -> bool:
        return time.monotonic() < self._cold_from + cfg.cold_boot_s

    # -- connections --

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(reader, writer)
        try:
            while conn.lost_at is None and not writer.is_closing():
                try:
                    req = await read_request(conn)
                except RequestError as e:
                    await send_json(conn, e.status, e.envelope, keep_alive=False)
                    break
                handler = self._routes.get((req.method, req.path))
                if handler is not None:
                    await handler(conn, req)
                elif any(path == req.path for _, path in self._routes):
                    await send_json(
                        conn, 405, _envelope(f"Method {req.method} not allowed."), req.keep_alive
                    )
                else:
                    await send_json(
                        conn,
                        404,
                        _envelope(f"Invalid URL ({req.method} {req.path})"),
                        req.keep_alive,
                    )
                if not req.keep_alive:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client left between requests
        except asyncio.CancelledError:
            # stop() cancels us. End normally: Python 3.11's start_server callback calls
            # task.exception() on its task and would log a cancelled one as an error.
            if not self._stopping:
                raise
        except Exception:
            logger.exception("simulator: connection handler failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    # -- endpoints --

    async def _health(self, conn: Conn, req: Request) -> None:
        self._counts["health_checks"] += 1
        cold = self._is_cold(self.config)
        await send_json(
            conn, 503 if cold else 200, _LOADING if cold else {"status": "ok"}, req.keep_alive
        )

    async def _props(self, conn: Conn, req: Request) -> None:
        """llama.cpp server's ``GET /props``: its ``modalities`` (``vision``, ``audio``)."""
        vision = self.config.vision
        if vision is None:
            await send_json(conn, 404, _envelope("File Not Found"), req.keep_alive)
            return
        props = {"model_path": self.models[0], "modalities": {"vision": vision, "audio": False}}
        await send_json(conn, 200, props, req.keep_alive)

    async def _show(self, conn: Conn, req: Request) -> None:
        """Ollama's ``POST /api/show``: the model's ``capabilities`` (``vision`` among them)."""
        vision = self.config.vision
        if vision is None:
            await send_json(conn, 404, _envelope("404 page not found"), req.keep_alive)
            return
        capabilities = ["completion", "vision"] if vision else ["completion"]
        await send_json(conn, 200, {"capabilities": capabilities}, req.keep_alive)

    async def _models(self, conn: Conn, req: Request) -> None:
        self._counts["health_checks"] += 1
        if self._is_cold(self.config):
            await send_json(conn, 503, _LOADING, req.keep_alive)
            return
        data = [
            {
                "id": m,
                "object": "model",
                "created": self._created,
                "owned_by": "slipstream-simulator",
            }
            for m in self.models
        ]
        await send_json(conn, 200, {"object": "list", "data": data}, req.keep_alive)

    async def _stats(self, conn: Conn, req: Request) -> None:
        await send_json(conn, 200, self.stats, req.keep_alive)

    async def _get_config(self, conn: Conn, req: Request) -> None:
        await send_json(conn, 200, dataclasses.asdict(self.config), req.keep_alive)

    async def _set_config(self, conn: Conn, req: Request) -> None:
        try:
            fields = json.loads(req.body or b"{}")
            if not isinstance(fields, dict):
                raise ValueError("expected a JSON object of simulator settings")
            self.configure(**fields)
        except ValueError as e:
            await send_json(conn, 400, _envelope(str(e)), req.keep_alive)
            return
        await send_json(conn, 200, dataclasses.asdict(self.config), req.keep_alive)

    async def _reset(self, conn: Conn, req: Request) -> None:
        self.reset()
        await send_json(conn, 200, dataclasses.asdict(self.config), req.keep_alive)

    async def _chat(self, conn: Conn, req: Request) -> None:
        await self._generate(conn, req, chat=True)

    async def _completions(self, conn: Conn, req: Request) -> None:
        await self._generate(conn, req, chat=False)

    async def _responses(self, conn: Conn, req: Request) -> None:
        """The Responses API natively: the chat answer's plan rendered as Responses events
        (``planning.responses_steps``), or a recorded Responses stream (``replay``); a 404 when
        ``responses_api`` is off."""
        if not self.config.responses_api:
            await send_json(
                conn, 404, _envelope(f"Invalid URL ({req.method} {req.path})"), req.keep_alive
            )
            return
        await self._generate(conn, req, chat=True, responses=True)

    async def _embeddings(self, conn: Conn, req: Request) -> None:
        self._counts["embeddings"] += 1
        try:
            body = json.loads(req.body)
            self._last_request = body
            answer = embeddings_body(body, model=str(body.get("model") or self.models[0]))
        except ValueError:
            await send_json(
                conn, 400, _envelope("We could not parse the JSON body."), req.keep_alive
            )
            return
        except RequestError as e:
            await send_json(conn, e.status, e.envelope, req.keep_alive)
            return
        await send_json(conn, 200, answer, req.keep_alive)

    async def _tokenize(self, conn: Conn, req: Request) -> None:
        """``POST /tokenize`` at the server's root, one token per word (as the usage counts
        prompts): vLLM's answer (``count``, ``max_model_len``, ``tokens``) for ``messages`` or
        ``prompt``, llama.cpp server's (``tokens``) for ``content`` (``tokenize_as``); 404
        when ``tokenize`` is off; after ``tokenize_delay_ms``."""
        self._counts["tokenize"] += 1
        cfg = self.config
        if not cfg.tokenize:
            await send_json(conn, 404, _envelope("File Not Found"), req.keep_alive)
            return
        if cfg.tokenize_delay_ms:
            await asyncio.sleep(cfg.tokenize_delay_ms / 1000)
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            if cfg.tokenize_as == "vllm" and ("messages" in body or "prompt" in body):
                words = prompt_words(body)
                answer: dict[str, Any] = {
                    "count": words,
                    "max_model_len": 32768,
                    "tokens": list(range(words)),
                }
            elif isinstance(body.get("content"), str):
                answer = {"tokens": list(range(len(body["content"].split())))}
            else:
                raise RequestError("'content' is required", "content")
        except ValueError:
            await send_json(
                conn, 400, _envelope("We could not parse the JSON body."), req.keep_alive
            )
            return
        except RequestError as e:
            await send_json(conn, e.status, e.envelope, req.keep_alive)
            return
        await send_json(conn, 200, answer, req.keep_alive)

    # -- generation --

    def _parse(self, req: Request, *, chat: bool) -> tuple[dict[str, Any], SimConfig]:
        try:
            body = json.loads(req.body)
        except ValueError:
            raise RequestError("We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.")
        self._last_request = body
        overrides: dict[str, Any] = {}
        for source, value in (
            ("x-sim-config", req.headers.get("x-sim-config")),
            ("sim", body.get("sim")),
        ):
            try:
                parsed = json.loads(value) if source == "x-sim-config" and value else value
            except ValueError:
                raise RequestError("x-sim-config is not JSON.", source) from None
            if parsed is not None and not isinstance(parsed, dict):
                raise RequestError(f"{source} must be a JSON object.", source)
            overrides |= parsed or {}
        try:
            cfg = self.config.merged(overrides)
        except ValueError as e:
            raise RequestError(str(e), "sim") from None
        if chat and not isinstance(body.get("messages"), list):
            raise RequestError(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        return body, cfg

    def _replay_events(self, name: str) -> list[bytes]:
        if (
            self.replay_dir is None
            or Path(name).name != name
            or not (self.replay_dir / name).is_file()
        ):
            raise RequestError(
                f"No replay file {name!r} in the simulator's replay dir.", "sim.replay"
            )
        # Split after each blank line so every event is paced on its own; joined, the pieces
        # are the file byte for byte.
        return re.findall(rb".*?\n\n|.+", (self.replay_dir / name).read_bytes(), re.S)

    async def _generate(
        self, conn: Conn, req: Request, *, chat: bool, responses: bool = False
    ) -> None:
        t0 = asyncio.get_running_loop().time()
        self._counts["requests"] += 1
        try:
            body, cfg = self._parse(req, chat=chat and not responses)
            if await self._refuse(conn, req, cfg):
                return
            if responses and cfg.replay is None:
                initial, body = as_chat_request(body)
            plan, steps, tail = self._plan(body, cfg, chat=chat)
            if responses and plan is not None:
                steps, tail = responses_steps(steps, tail, initial)
        except RequestError as e:
            await send_json(conn, e.status, e.envelope, req.keep_alive)
            return
        stream = plan is None or bool(body.get("stream"))
        record = self._record(req, cfg, plan, stream=stream)
        self._active += 1
        task = asyncio.current_task()
        assert task is not None
        conn.watch()
        try:
            if plan is None or stream:
                outcome = await self._stream(conn, req, cfg, steps, tail, t0)
            else:
                outcome = await self._respond(
                    conn, req, cfg, plan, t0, initial=initial if responses else None
                )
        except asyncio.CancelledError:
            if conn.lost_at is None:
                raise  # the server is stopping
            task.uncancel()
            outcome = "cancelled"
        except ConnectionError:  # a write found the transport closed before the watcher did
            conn.lost_at = conn.lost_at or time.monotonic()
            outcome = "cancelled"
        finally:
            await conn.unwatch()
            self._active -= 1
            record["ended_at"] = time.monotonic()
        self._count_outcome(conn, record, outcome)

    async def _refuse(self, conn: Conn, req: Request, cfg: SimConfig) -> bool:
        """Answer instead of generating while cold (503) or while ``fail_requests`` lasts (its
        ``fail_status``, or a hang-up); whether it answered."""
        if self._is_cold(cfg):
            await send_json(conn, 503, _LOADING, req.keep_alive)
            return True
        if self._fail_left <= 0:
            return False
        self._fail_left -= 1
        if self.config.fail_with in ("reset", "close"):
            hang_up(conn, reset=self.config.fail_with == "reset")
            return True
        status = self.config.fail_status
        message = f"Simulated failure: HTTP {status}"
        await send_json(
            conn,
            status,
            {"error": {"message": message, "type": "api_error", "code": status}},
            req.keep_alive,
        )
        return True

    def _plan(
        self, body: dict[str, Any], cfg: SimConfig, *, chat: bool
    ) -> tuple[Plan | None, Iterator[bytes], bytes]:
        """(plan, steps, tail): the answer's plan (None for a replay), its paced steps and the
        bytes after the last one. ``RequestError`` for a missing replay file."""
        if cfg.replay is not None:
            return None, iter(self._replay_events(cfg.replay)), b""
        model = body.get("model")
        model = model if isinstance(model, str) else self.models[0]
        plan = plan_answer(body, cfg, chat=chat, model=model)
        steps, tail = stream_body(plan)
        return plan, steps, tail

    def _record(
        self, req: Request, cfg: SimConfig, plan: Plan | None, *, stream: bool
    ) -> dict[str, Any]:
        """A new ``history`` record (see ``stats``), appended as active."""
        record: dict[str, Any] = {
            "id": plan.id if plan else f"replay-{cfg.replay}",
            "path": req.path,
            "stream": stream,
            "started_at": time.monotonic(),
            "ended_at": None,
            "cancelled_at": None,
            "outcome": "active",
        }
        self._history.append(record)
        return record

    def _count_outcome(self, conn: Conn, record: dict[str, Any], outcome: str) -> None:
        """Count a finished answer's ``outcome`` in ``stats`` and its ``history`` record."""
        record["outcome"] = outcome
        if outcome == "cancelled":
            self._counts["cancelled"] += 1
            record["cancelled_at"] = conn.lost_at
            self._cancel_times.append(record["cancelled_at"])
        elif outcome == "completed":
            self._counts["completed"] += 1
        logger.debug("simulator %s %s: %s", record["path"], record["id"], outcome)

    async def _wait_until(self, conn: Conn, due: float, ping_s: float) -> None:
        loop = asyncio.get_running_loop()
        while (left := due - loop.time()) > 0:
            if 0 < ping_s < left:
                await asyncio.sleep(ping_s)
                conn.send(b": ping\n\n")
                await conn.writer.drain()
            else:
                await asyncio.sleep(left)

    async def _stream(
        self,
        conn: Conn,
        req: Request,
        cfg: SimConfig,
        steps: Iterator[bytes],
        tail: bytes,
        t0: float,
    ) -> str:
        """Headers at once, then the first step at t0 + ttft and one step per 1/tokens_per_s,
        on an absolute schedule so a slow wakeup does not push every later token back."""
        loop = asyncio.get_running_loop()
        self._send_head(conn, req, cfg)
        due = t0 + cfg.ttft_ms / 1000
        await self._wait_until(conn, due, cfg.keepalive_comment_s)
        interval = 1 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
        # One set lookup per step instead of a comparison per fault: this loop paces the
        # benchmark's upstream (bench/simulator_capacity.py), so it stays this small.
        fault_steps = _fault_steps(cfg)
        sent = 0
        while True:
            data = next(steps, None)
            if sent in fault_steps:
                outcome, data, tail, stalled = await self._fault(conn, cfg, sent, data, tail)
                if outcome is not None:
                    return outcome
                due += stalled
            if data is None:
                break
            if sent:
                due += interval
                if (delay := due - loop.time()) > 0:
                    await asyncio.sleep(delay)
                elif not interval:
                    await asyncio.sleep(0)  # as fast as possible, but let other streams run
            conn.send(data)
            await conn.writer.drain()
            sent += 1
        return await self._send_tail(conn, cfg, tail)

    def _send_head(self, conn: Conn, req: Request, cfg: SimConfig) -> None:
        """The SSE response's head: chunked, or close-delimited when ``cfg.close_delimited``."""
        if cfg.close_delimited:
            conn.chunked = False
        keep_alive = req.keep_alive and not cfg.close_delimited
        conn.writer.write(
            response_head(
                200, _SSE_HEADERS, keep_alive=keep_alive, length=None, chunked=conn.chunked
            )
        )
        self._counts["streams_started"] += 1

    async def _fault(
        self, conn: Conn, cfg: SimConfig, sent: int, data: bytes | None, tail: bytes
    ) -> tuple[str | None, bytes | None, bytes, float]:
        """The faults due after ``sent`` steps, in this order: drop, error, inject, malformed,
        stall. ``data`` is the next step (None once the answer is spent: a malformed line then
        goes before the tail, and a stall does not happen). Returns (the outcome when the
        stream ends here, else None; ``data`` and ``tail``, corrupted or not; seconds stalled,
        which push every later step back)."""
        if sent == cfg.drop_after:
            await conn.unwatch()  # our own close is not the client leaving
            conn.writer.close()  # FIN after what was written; no last-chunk
            return "dropped", data, tail, 0.0
        if sent == cfg.error_after:
            error = _envelope(
                f"Simulated upstream error after {sent} tokens.", "server_error", "sim_error"
            )
            conn.send(event(error))
            conn.end()
            await conn.writer.drain()
            return "error", data, tail, 0.0
        if sent == cfg.inject_after:
            conn.send(b"data: " + cfg.inject_data.encode() + b"\n\n")
        if sent == cfg.malformed_after:
            if data is None:
                tail = _MALFORMED + tail
            else:
                data = _MALFORMED + data
        if data is None or sent != cfg.stall_after:
            return None, data, tail, 0.0
        loop = asyncio.get_running_loop()
        await self._wait_until(conn, loop.time() + cfg.stall_s, cfg.keepalive_comment_s)
        return None, data, tail, cfg.stall_s

    async def _send_tail(self, conn: Conn, cfg: SimConfig, tail: bytes) -> str:
        """The bytes after the last step and the end of the body; "completed"."""
        conn.send(tail)
        conn.end()
        await conn.writer.drain()
        if cfg.close_delimited:
            await conn.unwatch()
            conn.writer.close()  # the end of a close-delimited body
        return "completed"

    async def _respond(
        self,
        conn: Conn,
        req: Request,
        cfg: SimConfig,
        plan: Plan,
        t0: float,
        *,
        initial: dict[str, Any] | None = None,
    ) -> str:
        """Non-streaming: wait as long as the stream would have taken, then one JSON body (a
        response object when ``initial``, the Responses API's, is given)."""
        steps = max(1, *(c.tokens for c in plan.choices))
        faults = [
            (after, kind)
            for after, kind in ((cfg.drop_after, "dropped"), (cfg.error_after, "error"))
            if after is not None and after <= steps
        ]
        written, fault = min(faults) if faults else (steps, None)
        interval = 1 / cfg.tokens_per_s if cfg.tokens_per_s > 0 else 0.0
        stall = cfg.stall_s if cfg.stall_after is not None and cfg.stall_after < written else 0.0
        await self._wait_until(
            conn, t0 + cfg.ttft_ms / 1000 + max(written - 1, 0) * interval + stall, 0
        )
        if fault == "dropped":
            await conn.unwatch()
            conn.writer.close()
            return "dropped"
        if fault == "error":
            await send_json(
                conn,
                500,
                _envelope("Simulated upstream error.", "server_error", "sim_error"),
                req.keep_alive,
            )
            return "error"
        body = dumps(complete_body(plan) if initial is None else response_body(plan, initial))
        if plan.usage_json:
            body = body.replace(HOLE_JSON, plan.usage_json.encode())
        if cfg.malformed_after is not None:
            body = body[: len(body) // 2]
        await send_json(conn, 200, None, req.keep_alive, body=body)
        return "completed"
