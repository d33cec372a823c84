"""Generation backends for synth_data.py behind one interface, with the request cache in front of them.

    hf      local transformers: batched, left-padded, on GPU when there is one
    vllm    offline vllm.LLM (GPU); imported only when chosen
    openai  any OpenAI-compatible endpoint (vLLM or SGLang servers, transformers serve, hosted APIs)
            through the openai package's async client: a concurrency limit, timeouts, and retries with
            exponential backoff on 429, 5xx and connection errors (the client's own); the API key comes
            from an environment variable only

A request's prompt is a list of messages (the model's chat template applies, with the request's tools) or a
string, sent as it is (a rendered template prefix, as Magpie uses). Every backend's `run(requests, done)` calls
`done(request, result)` as each request finishes; `generate` puts the cache in front and keeps the tallies. A
result is {"text", "tool_calls"?, "prompt_tokens", "completion_tokens"}: the answer's text (reasoning as a
leading <think> block) and the calls it makes, as the server or the tokenizer's response parser reads them.
"""

import asyncio
import json
import os
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from jinja2 import TemplateError
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from common.chat.template import fold_system, rejects_system, render
from common.errors import UserError
from common.evaluate import until_stop
from common.models import load_tokenizer, resolve_dtype
from common.request_cache import RequestCache, request_key

LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")


@dataclass
class Request:
    prompt: list | str
    sample: int
    tools: list | None = None  # the row's tools (normalized), offered to the model
    key: str = ""


@dataclass
class Tally:
    """What the summary line reports."""

    requests: int = 0
    cache_hits: int = 0
    sent: int = 0
    unfinished: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"requests {self.requests}, cache hits {self.cache_hits}, answered {self.sent}, "
            f"failed or unfinished {self.unfinished}, "
            f"tokens {self.prompt_tokens} in / {self.completion_tokens} out, {self.seconds:.0f} s"
        )


def sampling_of(params: dict) -> dict:
    return {k: params[k] for k in ("temperature", "top_p", "max_new_tokens")}


def make_backend(params: dict):
    kind = params["backend"]
    if kind == "hf":
        return HFBackend(params)
    if kind == "vllm":
        return VLLMBackend(params)
    return OpenAIBackend(params)


def generate(
    backend,
    requests: list[Request],
    sampling: dict,
    cache: RequestCache,
    tally: Tally,
    label: str,
    progress: bool = True,
) -> dict:
    """{key: result} for every request; finished ones come from the cache, the rest from the backend, each
    written to the cache as it arrives."""

    for r in requests:
        # tools change the answer, so they are part of the key; a request without them keeps the key it had
        prompt = {"messages": r.prompt, "tools": r.tools} if r.tools else r.prompt
        r.key = request_key(backend.name, backend.model, prompt, sampling, r.sample)
    results = cache.get_many([r.key for r in requests])
    pending = [r for r in requests if r.key not in results]
    tally.requests += len(requests)
    tally.cache_hits += len(requests) - len(pending)
    bar = tqdm(total=len(pending), desc=label, unit="req", disable=not progress or not pending)
    start, before = time.time(), tally.sent

    def done(request: Request, result: dict) -> None:
        cache.put(request.key, result)
        results[request.key] = result
        tally.sent += 1
        tally.prompt_tokens += result["prompt_tokens"]
        tally.completion_tokens += result["completion_tokens"]
        bar.update(1)

    try:
        if pending:
            backend.run(pending, sampling, done)
    finally:
        bar.close()
        tally.seconds += time.time() - start
        tally.unfinished += len(pending) - (tally.sent - before)
    return results


class HFBackend:
    name = "hf"

    def __init__(self, params: dict):

        self.model = params["model"]
        self.tokenizer = load_tokenizer(self.model, params["trust_remote_code"])
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # Llama-3's has none; left padding under the attention mask is never read
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # a template that rejects system turns (Gemma 1 and 2) gets the system prompt in the first user turn
        self.fold = rejects_system(self.tokenizer)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.lm = (
            AutoModelForCausalLM.from_pretrained(
                self.model, dtype=resolve_dtype(params["dtype"]), trust_remote_code=params["trust_remote_code"]
            )
            .to(device)
            .eval()
        )
        self.batch_size, self.seed = params["batch_size"], params["seed"]
        # a tokenizer with a response parser (an sft_chat.py output has one) reads calls back from the answer
        self.parse = getattr(self.tokenizer, "response_template", None) is not None

    @torch.no_grad()
    def run(self, requests: list[Request], sampling: dict, done) -> None:
        # Similar lengths share a batch, so little of it is padding.
        order = sorted(requests, key=lambda r: len(str(r.prompt)))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            # each prompt rendered alone, as each has its own tools; the rendered text holds its special tokens
            texts = [r.prompt if isinstance(r.prompt, str) else self._render(r) for r in chunk]
            batch = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(
                self.lm.device
            )
            torch.manual_seed(self.seed + int(chunk[0].key[:8], 16))  # the same batch samples the same answers
            sample = sampling["temperature"] > 0
            out = self.lm.generate(
                **batch,
                max_new_tokens=sampling["max_new_tokens"],
                do_sample=sample,
                temperature=sampling["temperature"] if sample else None,
                top_p=sampling["top_p"] if sample else None,
                use_cache=True,
            )
            for i, (request, ids) in enumerate(
                zip(chunk, out[:, batch["input_ids"].shape[1] :].tolist(), strict=False)
            ):
                ids = until_stop(ids, self.lm.generation_config.eos_token_id)
                done(
                    request,
                    {
                        **self._answer(ids),
                        "prompt_tokens": int(batch["attention_mask"][i].sum()),
                        "completion_tokens": len(ids),
                    },
                )

    def _render(self, request: Request) -> str:
        try:
            return render(
                self.tokenizer,
                fold_system(request.prompt) if self.fold else request.prompt,
                generation_prompt=True,
                tools=request.tools,
            )
        except TemplateError as e:
            raise UserError(f"the chat template of {self.model} rejects a prompt: {e}") from None

    def _answer(self, ids: list[int]) -> dict:
        """The answer's text and calls, as the tokenizer's response parser reads them from the text with its special
        tokens; without a parser, or when it cannot read the answer (a call cut short), the plain text."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not self.parse:
            return {"text": text}
        try:
            message = self.tokenizer.parse_response(self.tokenizer.decode(ids, skip_special_tokens=False), prefix="")
        except ValueError:
            return {"text": text}
        calls = {"tool_calls": message["tool_calls"]} if message.get("tool_calls") else {}
        return {"text": with_think(message.get("reasoning_content"), message.get("content") or ""), **calls}


class VLLMBackend:
    name = "vllm"

    def __init__(self, params: dict):
        try:
            from vllm import LLM  # noqa: PLC0415 - optional: GPU machines with vLLM only
        except ImportError:
            raise UserError("backend=vllm needs vllm installed (pip install vllm, on a GPU machine)") from None
        self.model, self.seed = params["model"], params["seed"]
        self.llm = LLM(model=self.model, seed=self.seed, trust_remote_code=params["trust_remote_code"])

    def run(self, requests: list[Request], sampling: dict, done) -> None:
        from vllm import SamplingParams  # noqa: PLC0415 - optional: GPU machines with vLLM only

        if any(r.tools for r in requests):
            raise UserError(
                "backend=vllm does not offer rows' tools to the model; serve it (vllm serve MODEL "
                "--enable-auto-tool-choice --tool-call-parser ...) and use backend=openai"
            )

        def params_of(r):  # a seed per request: a rerun samples the same answer
            return SamplingParams(
                temperature=sampling["temperature"],
                top_p=sampling["top_p"],
                max_tokens=sampling["max_new_tokens"],
                seed=self.seed + int(r.key[:8], 16),
            )

        chats = [r for r in requests if not isinstance(r.prompt, str)]
        texts = [r for r in requests if isinstance(r.prompt, str)]
        outputs = []
        if chats:
            outputs += zip(
                chats,
                self.llm.chat([r.prompt for r in chats], sampling_params=[params_of(r) for r in chats]),
                strict=False,
            )
        if texts:
            outputs += zip(
                texts,
                self.llm.generate([r.prompt for r in texts], sampling_params=[params_of(r) for r in texts]),
                strict=False,
            )
        for request, out in outputs:
            done(
                request,
                {
                    "text": out.outputs[0].text,
                    "prompt_tokens": len(out.prompt_token_ids),
                    "completion_tokens": len(out.outputs[0].token_ids),
                },
            )


class OpenAIBackend:
    name = "openai"

    def __init__(self, params: dict):
        import openai  # noqa: PLC0415 - optional: imported by the openai backend alone

        self.model, self.base_url = params["model"], params["base_url"]
        if not self.base_url:
            raise UserError("backend=openai needs base_url (like http://127.0.0.1:8000/v1)")
        host = urlparse(self.base_url).hostname
        if not host:
            raise UserError(f"base_url={self.base_url!r} is not a URL (like http://127.0.0.1:8000/v1)")
        key = os.environ.get(params["api_key_env"], "")
        if not key and host not in LOCAL_HOSTS:
            raise UserError(
                f"backend=openai at {self.base_url} needs an API key in the environment variable "
                f"{params['api_key_env']} (api_key_env names it; keys are never read from PARAMS)"
            )
        self.settings = dict(base_url=self.base_url, api_key=key or "none", timeout=params["timeout"])
        self.concurrency, self.retries, self.seed = params["concurrency"], params["retries"], params["seed"]
        try:  # fail now, in one line, rather than after every request's retries
            openai.OpenAI(**self.settings, max_retries=1).models.list()
        except openai.APIConnectionError as e:
            raise UserError(f"cannot reach the endpoint {self.base_url} ({e.__cause__ or e})") from None
        except openai.AuthenticationError:
            raise UserError(f"{self.base_url} rejected the API key in {params['api_key_env']}") from None
        except openai.APIStatusError:
            pass  # a server without /models can still serve completions

    def run(self, requests: list[Request], sampling: dict, done) -> None:
        asyncio.run(self._run(requests, sampling, done))

    async def _run(self, requests: list[Request], sampling: dict, done) -> None:
        import openai  # noqa: PLC0415 - optional: imported by the openai backend alone

        client = openai.AsyncOpenAI(**self.settings, max_retries=self.retries)
        gate, failures = asyncio.Semaphore(self.concurrency), []
        common = dict(
            model=self.model,
            max_tokens=sampling["max_new_tokens"],
            temperature=sampling["temperature"],
            top_p=sampling["top_p"],
        )

        async def one(request: Request) -> None:
            async with gate:
                if failures:  # the endpoint gave up on a request after its retries: send nothing more
                    return
                seed = (self.seed + int(request.key[:8], 16)) % 2**31
                try:
                    if isinstance(request.prompt, str):
                        reply = await client.completions.create(prompt=request.prompt, seed=seed, **common)
                        answer = {"text": reply.choices[0].text or ""}
                    else:
                        tools = {"tools": request.tools} if request.tools else {}
                        reply = await client.chat.completions.create(
                            messages=_wire(request.prompt), seed=seed, **tools, **common
                        )
                        answer = _answer_of(reply.choices[0].message)
                except openai.APIError as e:
                    failures.append(e)
                    return
                usage = reply.usage
                done(
                    request,
                    {
                        **answer,
                        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
                    },
                )

        try:
            await asyncio.gather(*(one(r) for r in requests))
        finally:
            await client.close()
        if failures:
            error = failures[0]
            status = getattr(error, "status_code", None)
            raise UserError(
                f"{self.base_url} failed a request after {self.retries} retries "
                f"({f'HTTP {status}' if status else type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                "finished results are kept in the request cache: run again to continue"
            )


def with_think(reasoning: str | None, content: str) -> str:
    """An answer with its separately returned reasoning put back as a leading <think> block."""
    return f"<think>\n{reasoning}\n</think>\n\n{content}" if reasoning else content


def _wire(messages: list[dict]) -> list[dict]:
    """Messages as the OpenAI API takes them: call arguments as JSON text (rows may hold them as objects)."""

    def call(c):
        arguments = c["function"].get("arguments")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
        return {**c, "function": {**c["function"], "arguments": text}}

    return [{**m, "tool_calls": [call(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]


def _answer_of(message) -> dict:
    """A chat reply's text (a server's separate reasoning_content as a <think> block) and its calls, with their ids
    and arguments as the server sent them (JSON text; common.synthesis.answer_message reads them)."""
    text = with_think(getattr(message, "reasoning_content", None), message.content or "")
    calls = [
        {
            "type": "function",
            **({"id": c.id} if c.id else {}),
            "function": {"name": c.function.name, "arguments": c.function.arguments},
        }
        for c in message.tool_calls or []
        if getattr(c, "function", None)
    ]
    return {"text": text, **({"tool_calls": calls} if calls else {})}
