"""NVIDIA Dynamo's own CPU-only processes on this machine: a tiny model directory, the OpenAI frontend and
mocker workers, started, observed and stopped as the real thing (no imitation).

Used by the tests against real Dynamo and by a later ``cost-agent demo --engine dynamo``. The agent never
imports Dynamo: these are child processes (``python -m dynamo.frontend`` / ``python -m dynamo.mocker``)
spoken to over HTTP and NATS. Nothing in the agent's own import graph loads this module; the model
directory's builder imports ``tokenizers`` and ``transformers`` (installed with Dynamo) inside the function.

Discovery is Dynamo's ``file`` backend in a directory of the harness (no etcd), the event plane is NATS
(a JetStream-enabled server: Dynamo was measured with ``-js``), requests travel over Dynamo's TCP request
plane. Every port is chosen by the operating system (``0``) and read back from ``/proc`` (Linux), so two
harnesses never race for one. Each process's output goes to a log file in the harness's directory, and
:meth:`LocalDynamo.stop` leaves no process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import unquote

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agent.actuators.processes import listening_ports
from agent.providers.httpclient import HttpClient, ServiceUnavailable

MODEL_NAME: Final = "tiny"
COMPONENT: Final = "backend"
"""The mocker's component and endpoint (its default ``dyn://dynamo.backend.generate``, namespace ours)."""
ENDPOINT: Final = "generate"
VOCABULARY_WORDS: Final = 300
SPECIAL_TOKENS: Final = ("<unk>", "<s>", "</s>", "<pad>")

# The prompt is "role : content" per message, then "assistant :": with a whitespace tokenizer every word
# is one token, so a test knows a prompt's exact token count.
CHAT_TEMPLATE: Final = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


class DynamoError(RuntimeError):
    """A Dynamo process did not start, did not become ready in time, or died; the text says which and
    ends with the tail of its log."""


def vocabulary() -> list[str]:
    """The tiny model's words after its special tokens: ``w0`` … ``w{n-1}`` and the chat template's."""
    return [f"w{i}" for i in range(VOCABULARY_WORDS)] + ["user", "assistant", "system", ":"]


def prompt_tokens(user_words: int) -> int:
    """Tokens the frontend counts for one user message of ``user_words`` words (the chat template's 4)."""
    return user_words + 4


def write_tiny_model(directory: Path) -> Path:
    """Write a tokenizer-only Llama-shaped model directory that Dynamo loads offline (``HF_HUB_OFFLINE=1``):
    a WordLevel tokenizer split on whitespace, a chat template, ``config.json`` and
    ``generation_config.json``. Returns ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokens = [*SPECIAL_TOKENS, *vocabulary()]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(directory))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": len(tokens),
        "max_position_embeddings": 32768,
        "bos_token_id": vocab["<s>"],
        "eos_token_id": vocab["</s>"],
        "torch_dtype": "float16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    generation = {"bos_token_id": vocab["<s>"], "eos_token_id": vocab["</s>"]}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=1) + "\n")
    return directory


@dataclass
class DynamoProcess:
    """One Dynamo process; its stdout and stderr go to ``log_path``."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """SIGTERM: a worker leaves discovery at once and exits when its in-flight requests are done."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as a reclaimed spot node does."""
        if self.running:
            self.proc.kill()

    async def wait_exit(self, timeout_s: float) -> int:
        """The exit code, waiting up to ``timeout_s`` for it."""
        deadline = time.monotonic() + timeout_s
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise DynamoError(f"{self.name} still running after {timeout_s:g} s\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        return code


@dataclass
class Worker(DynamoProcess):
    """A mocker worker; ``worker_id`` is its Dynamo instance id once registered."""

    worker_id: int | None = field(default=None)


class LocalDynamo:
    """A Dynamo deployment in one directory: one frontend (:meth:`start_frontend`) and any number of
    mocker workers (:meth:`start_worker`) in namespace ``namespace``, discovering each other through files
    and publishing events on the NATS server at ``nats_url``.

    Use as a context manager (``with LocalDynamo(...) as dynamo:``): leaving it kills every process."""

    def __init__(
        self,
        workdir: Path,
        *,
        nats_url: str,
        model_dir: Path,
        namespace: str,
        python: str = sys.executable,
    ) -> None:
        self.workdir = workdir
        self.nats_url = nats_url
        self.model_dir = model_dir
        self.namespace = namespace
        self.python = python
        self.discovery_dir = workdir / "discovery"
        self.frontend: DynamoProcess | None = None
        self.frontend_url = ""
        self.workers: list[Worker] = []
        self._started: list[DynamoProcess] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment of every Dynamo process of this deployment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "NATS_", "ETCD_"))}
        env.update(
            HF_HUB_OFFLINE="1",
            DYN_DISCOVERY_BACKEND="file",
            DYN_FILE_KV=str(self.discovery_dir),
            DYN_EVENT_PLANE="nats",
            DYN_REQUEST_PLANE="tcp",
            NATS_SERVER=self.nats_url,
            NO_COLOR="1",
        )
        return env

    @property
    def processes(self) -> list[DynamoProcess]:
        """Every process this deployment started, in order (frontend and workers, running or not)."""
        return list(self._started)

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            return subprocess.Popen(
                [self.python, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,  # a Ctrl-C meant for the caller is not a SIGINT to Dynamo
            )

    def start_frontend(self, *, migration_limit: int = 3, extra_args: Sequence[str] = ()) -> DynamoProcess:
        """``python -m dynamo.frontend`` on 127.0.0.1, a port of the OS's choice; see :meth:`wait_ready`."""
        if self.frontend is not None:
            raise DynamoError("this deployment has a frontend already")
        args = ["-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", "0"]
        args += ["--namespace", self.namespace, "--migration-limit", str(migration_limit), *extra_args]
        proc = self._spawn("frontend", args)
        self.frontend = DynamoProcess("frontend", proc, self.workdir / "frontend.log")
        self._started.append(self.frontend)
        return self.frontend

    def mocker_args(self, *, speedup_ratio: float = 1.0, extra_args: Sequence[str] = ()) -> list[str]:
        """The arguments after the interpreter of a mocker worker serving the tiny model at
        ``dyn://{namespace}.backend.generate``."""
        args = ["-m", "dynamo.mocker", "--model-path", str(self.model_dir), "--model-name", MODEL_NAME]
        args += ["--endpoint", f"dyn://{self.namespace}.{COMPONENT}.{ENDPOINT}"]
        return [*args, "--speedup-ratio", f"{speedup_ratio:g}", *extra_args]

    def worker_command(self, *, speedup_ratio: float = 1.0, extra_args: Sequence[str] = ()) -> list[str]:
        """``[actuator.local] command`` for this deployment's mocker workers (placeholders ``{python}`` and
        ``{startup_time}``); run it with :attr:`env` added (``[actuator.local] env``)."""
        args = self.mocker_args(speedup_ratio=speedup_ratio, extra_args=extra_args)
        return ["{python}", *args, "--startup-time", "{startup_time}"]

    def start_worker(
        self,
        *,
        speedup_ratio: float = 1.0,
        startup_time_s: float | None = None,
        extra_args: Sequence[str] = (),
    ) -> Worker:
        """``python -m dynamo.mocker`` serving the tiny model at ``dyn://{namespace}.backend.generate``."""
        name = f"worker-{len(self.workers) + 1}"
        args = self.mocker_args(speedup_ratio=speedup_ratio)
        if startup_time_s is not None:
            args += ["--startup-time", f"{startup_time_s:g}"]
        proc = self._spawn(name, [*args, *extra_args])
        worker = Worker(name, proc, self.workdir / f"{name}.log")
        self.workers.append(worker)
        self._started.append(worker)
        return worker

    def registered_instances(self) -> dict[int, int]:
        """Discovery's serving instances of our endpoint: instance id → its request-plane TCP port."""
        found: dict[int, int] = {}
        instances = self.discovery_dir / "v1" / "instances"
        prefix = f"{self.namespace}/{COMPONENT}/{ENDPOINT}/"
        try:
            entries = list(instances.iterdir())
        except OSError:
            return found
        for entry in entries:
            if not unquote(entry.name).startswith(prefix):
                continue
            try:
                record = json.loads(entry.read_text())
                address = record["transport"]["tcp"].split("/", 1)[0]
                found[int(record["instance_id"])] = int(address.rsplit(":", 1)[1])
            except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
                continue  # being written or removed
        return found

    async def wait_unregistered(self, worker: Worker, timeout_s: float = 5.0) -> float:
        """Wait until ``worker`` has left discovery (as a worker does at once on SIGTERM); return the
        seconds waited, or raise DynamoError after ``timeout_s``."""
        started = time.monotonic()
        while worker.worker_id in self.registered_instances():
            if time.monotonic() - started > timeout_s:
                raise DynamoError(f"{worker.name} still in discovery after {timeout_s:g} s")
            await asyncio.sleep(0.01)
        return time.monotonic() - started

    def _identify_workers(self) -> None:
        instances = self.registered_instances()
        for worker in self.workers:
            if worker.worker_id is None and worker.running:
                ports = {port for _, port in listening_ports(worker.pid)}
                for instance_id, port in instances.items():
                    if port in ports:
                        worker.worker_id = instance_id

    def _check_alive(self, processes: Sequence[DynamoProcess]) -> None:
        for process in processes:
            if not process.running:
                raise DynamoError(
                    f"{process.name} exited with {process.proc.returncode}\n{process.log_tail()}"
                )

    async def metrics_text(self, http: HttpClient, timeout_s: float = 5.0) -> str:
        """The frontend's Prometheus text now."""
        answer = await http.request("GET", f"{self.frontend_url}/metrics", timeout_s=timeout_s)
        if answer.status != 200:
            raise DynamoError(f"frontend /metrics answered {answer.status}")
        return answer.body.decode()

    async def wait_metrics(
        self, http: HttpClient, until: Callable[[str], bool], *, what: str, timeout_s: float = 30.0
    ) -> str:
        """Poll the frontend's ``/metrics`` until ``until(text)`` holds; return that text. Raise
        DynamoError saying ``what`` was awaited after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = await self.metrics_text(http)
            if until(text):
                return text
            if time.monotonic() > deadline:
                raise DynamoError(f"frontend metrics: {what} not seen within {timeout_s:g} s")
            await asyncio.sleep(0.05)

    async def wait_frontend(self, *, timeout_s: float = 30.0) -> str:
        """Wait until the frontend listens (its workers may come later, from an actuator); its base URL."""
        if self.frontend is None:
            raise DynamoError("no frontend started")
        deadline = time.monotonic() + timeout_s
        while not self.frontend_url:
            self._check_alive([self.frontend])
            ports = [port for ip, port in listening_ports(self.frontend.pid) if ip == "127.0.0.1"]
            if ports:
                self.frontend_url = f"http://127.0.0.1:{min(ports)}"
            elif time.monotonic() > deadline:
                tail = self.frontend.log_tail()
                raise DynamoError(f"frontend not listening within {timeout_s:g} s\n{tail}")
            else:
                await asyncio.sleep(0.05)
        return self.frontend_url

    async def wait_ready(self, http: HttpClient, *, timeout_s: float = 30.0) -> None:
        """Wait until the frontend answers, its ``dynamo_frontend_model_ready`` is 1 for the tiny model, and
        every worker is registered in discovery (its instance id known). Raise DynamoError at once when the
        frontend, or a worker not yet registered, has exited (with its log's tail), and naming what is
        missing after ``timeout_s``."""
        if self.frontend is None:
            raise DynamoError("no frontend started")
        deadline = time.monotonic() + timeout_s
        waiting_for = "the frontend's HTTP port"
        while time.monotonic() < deadline:
            self._check_alive([self.frontend])
            if not self.frontend_url:
                ports = [port for ip, port in listening_ports(self.frontend.pid) if ip == "127.0.0.1"]
                if ports:
                    self.frontend_url = f"http://127.0.0.1:{min(ports)}"
            self._identify_workers()
            unregistered = [w for w in self.workers if w.worker_id is None]
            self._check_alive(unregistered)  # one that died before registering never will: fail now
            if unregistered:
                waiting_for = f"registration of {', '.join(w.name for w in unregistered)}"
            elif self.frontend_url:
                waiting_for = "dynamo_frontend_model_ready 1"
                try:
                    if model_ready(await self.metrics_text(http, timeout_s=2.0)):
                        return
                except (ServiceUnavailable, DynamoError):
                    pass  # not answering yet
            await asyncio.sleep(0.05)
        raise DynamoError(f"Dynamo not ready within {timeout_s:g} s: waiting for {waiting_for}")

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every process still running, SIGKILL to what remains after ``grace_s``."""
        for process in self._started:
            process.terminate()
        deadline = time.monotonic() + grace_s
        for process in self._started:
            try:
                process.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.proc.wait()

    def __enter__(self) -> LocalDynamo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def metric(metrics_text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` (e.g. ``dynamo_frontend_requests_total``,
    ``dynamo_frontend_output_sequence_tokens_sum``) whose labels include ``labels``; 0 when none (Dynamo
    creates a series at its first event). Parsed with prometheus-client's own parser."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def model_ready(metrics_text: str, model: str = MODEL_NAME) -> bool:
    """Whether the frontend's ``dynamo_frontend_model_ready`` gauge is 1 for ``model``."""
    return metric(metrics_text, "dynamo_frontend_model_ready", model=model) == 1


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One streamed chat completion as the client saw it."""

    status: int
    prompt_tokens: int
    completion_tokens: int
    chunks: int
    """``data:`` events with choices (not one per token: one event may carry several)."""
    finish_reason: str | None
    error: str | None
    """An in-stream error event or a non-200 answer's body; None when the stream ended with [DONE]."""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.finish_reason is not None


def chat_request(user_words: int, max_tokens: int, *, first_word: int = 0) -> dict[str, object]:
    """A streaming chat completion of ``max_tokens`` tokens (EOS ignored) for a user message of
    ``user_words`` words: :func:`prompt_tokens` gives its prompt's token count."""
    words = " ".join(f"w{(first_word + i) % VOCABULARY_WORDS}" for i in range(user_words))
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": words}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


async def stream_chat(
    session: aiohttp.ClientSession, base_url: str, request: dict[str, object], *, timeout_s: float
) -> ChatResult:
    """POST ``request`` to ``{base_url}/v1/chat/completions`` and read its server-sent events to the end.
    The mocker's tokens have empty text: count on ``usage``, which the last event carries."""
    status, chunks, prompt, completion = 0, 0, 0, 0
    finish: str | None = None
    error: str | None = None
    async with session.post(
        f"{base_url}/v1/chat/completions", json=request, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as response:
        status = response.status
        if status != 200:
            return ChatResult(status, 0, 0, 0, None, (await response.text())[:500])
        async for raw in response.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, "event:" lines
            data = line[len(b"data:") :].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                error = json.dumps(event["error"])[:500]
                continue
            for choice in event.get("choices") or []:
                chunks += 1
                finish = choice.get("finish_reason") or finish
            usage = event.get("usage")
            if usage:
                prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        else:
            error = error or "stream ended without [DONE]"
    return ChatResult(status, prompt, completion, chunks, finish, error)
