"""Synthetic data: new requests, teacher responses and judged preference pairs, then cleaning.

    python synth_data.py                    # sample the default sft_chat.py model, verify, write preference pairs
    python dpo.py data=outputs/synth_data/preferences.jsonl    # ...and train DPO on them
    python synth_data.py stages=[responses,clean] backend=openai base_url=http://127.0.0.1:8000/v1 \
        model=Qwen/Qwen2.5-7B-Instruct
    python synth_data.py stages=[instructions,responses,clean] data=my_seeds.jsonl num_instructions=2000

Stages run in this order, any of them alone, each feeding the next:
    instructions  new user requests from the seed rows in `data`: self-instruct (the model is shown a few seed
                  requests and writes a new one) or Magpie (the model writes the user turn from the template's
                  user header alone); kept only when not similar to any seed or kept request
    responses     num_samples answers per prompt, as chat rows sft_chat.py reads as they are
    preferences   num_samples answers per prompt, scored by the judge, written as {"prompt", "chosen",
                  "rejected"} rows dpo.py reads as they are (best against worst; prompts with no difference skipped)
    clean         common/cleaning over the last stage's output (the raw rows stay in <stage>.raw.jsonl)

A row's `tools` are offered to the model with its prompt (and carried into new requests when every seed row lists
the same ones); its answers are assistant messages with their tool_calls, and the written rows keep the tools.

Every request is cached in output_dir/requests.sqlite by (backend, model, prompt, sampling, sample index):
a killed run started again re-sends no finished request, and output files are written whole, then renamed.
"""

import os

from common.chat.reasoning import strip_reasoning
from common.chat.tools import answer_message, answer_text, normalize_tools, tool_names
from common.checkpoint import check_model_folder
from common.cleaning import CLEAN_DEFAULTS, scrub_only
from common.data import DataReport, Row, write_rows
from common.errors import UserError, exit_on_user_error
from common.generation import Request, Tally, generate, make_backend, sampling_of
from common.models import load_tokenizer
from common.params import Rules, resolve, save_params
from common.prepare import read_rows
from common.prompts import prompt_of, prompt_problem
from common.request_cache import RequestCache
from common.rewards import load_function
from common.synthesis import (
    best_and_worst,
    judge_rubric_reply,
    last_request,
    magpie_prefix,
    novel,
    reward_scores,
    self_instruct_prompts,
    shared_tools,
    with_tools,
)

PARAMS = dict(
    stages=["preferences", "clean"],  # any of instructions, responses, preferences, clean (in that order)
    data=[
        "data/examples/chat_train.jsonl"
    ],  # seed requests or prompts: chat rows (a last assistant turn is the reference) or {"prompt"}
    test_data="data/examples/chat_test.jsonl",  # held out: the clean stage drops rows that overlap it ("" to skip)
    output_dir="outputs/synth_data",
    backend="hf",  # hf (local transformers), vllm (offline, GPU), openai (any OpenAI-compatible endpoint)
    model="outputs/sft_chat/final",  # the default sft_chat.py run's output; or a hub id, a folder, a served model name
    base_url="",  # openai: the endpoint, e.g. http://127.0.0.1:8000/v1
    api_key_env="OPENAI_API_KEY",  # openai: the environment variable holding the key (not needed on 127.0.0.1)
    concurrency=8,  # openai: requests in flight
    timeout=120.0,  # openai: seconds per request
    retries=5,  # openai: retries with exponential backoff on 429, 5xx and connection errors
    dtype="auto",  # hf: auto is bf16 on a GPU that has it, fp32 on CPU
    batch_size=64,  # hf: prompts per generate call
    temperature=1.0,
    top_p=1.0,
    max_new_tokens=64,
    system_prompt="",  # put first in prompts that have no system turn
    num_samples=4,  # answers per prompt
    num_instructions=100,  # instructions: how many new requests to keep
    instruction_style="self_instruct",  # or "magpie" (needs a chat-template model)
    examples_per_prompt=3,  # self_instruct: seed requests shown per prompt
    max_similarity=0.7,  # instructions: estimated Jaccard (word 1-2-grams) to every kept request must stay below this
    judge="verifier",  # verifier, llm or reward_model
    keep_reasoning=False,  # the judge sees answers without a leading <think> block unless true
    verifier="data/examples/verify.py:verify",  # fn(row, answer) -> bool or number (a message for rows with tools)
    judge_model="",  # llm: a model on the same backend; reward_model: an AutoModelForSequenceClassification
    rubric="Rate from 1 to 10 how well the answer serves the request. Reply with the number only.\n"
    "Request: {prompt}\nAnswer: {answer}",
    seed=42,
    progress_bar=True,
    on_bad_rows="error",  # or "skip": drop and count them in data_report.json
    num_proc=0,  # processes that read, check and clean the rows (0: every core available to this process)
    data_cache_dir="outputs/data_cache",  # checked and cleaned rows keyed by data and settings, as the other scripts'
    trust_remote_code=False,
    clean=dict(CLEAN_DEFAULTS),  # the clean stage's settings (README "Cleaning"); seed rows get its PII scrub only
)
# Values and bounds of this script's own keys (the shared ones are in common/params.py)
RULES = Rules(
    choices={
        "stages": ("instructions", "responses", "preferences", "clean"),
        "backend": ("hf", "vllm", "openai"),
        "judge": ("verifier", "llm", "reward_model"),
        "instruction_style": ("self_instruct", "magpie"),
    },
    bounds={
        "temperature": (lambda v: v >= 0, "must be >= 0"),
        "max_similarity": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "num_samples": (lambda v: v >= 1, "must be >= 1"),
        "num_instructions": (lambda v: v >= 1, "must be >= 1"),
        "concurrency": (lambda v: v >= 1, "must be >= 1"),
        "retries": (lambda v: v >= 0, "must be >= 0"),
        "timeout": (lambda v: v > 0, "must be > 0"),
        "max_new_tokens": (lambda v: v >= 1, "must be >= 1"),
    },
)
ATTEMPTS_PER_INSTRUCTION = 3  # self-instruct and Magpie repeat themselves: ask for 3x, keep the novel ones


def check(params: dict) -> list[str]:
    """The stages in pipeline order; files, the model and the judge's function are checked before any model loads."""
    stages, order = params["stages"], RULES.choices["stages"]
    if not stages or stages != sorted(stages, key=order.index) or len(set(stages)) < len(stages):
        raise UserError(f"stages={stages} must be a non-empty subset of {list(order)} in that order")
    generating = stages != ["clean"]
    if generating and params["backend"] != "openai":  # a served model is named, not a folder
        check_model_folder(params["model"], PARAMS["model"])
    if params["test_data"] and not os.path.isfile(params["test_data"]):
        raise UserError(f"test_data file not found: {params['test_data']} (test_data= skips it)")
    if "preferences" in stages and params["judge"] == "verifier":
        load_function(params["verifier"], "verifier")
    if "preferences" in stages and params["judge"] != "verifier" and not params["judge_model"]:
        raise UserError(f"judge={params['judge']} needs judge_model")
    return stages


def score(
    params: dict, backend, prompts: list, tools: list, answers: list[list[dict]], rows: list[Row], gen
) -> list[list[float]]:
    """The judge's score of every answer of every prompt (of the answer alone, without its reasoning, unless
    keep_reasoning=true). The verifier gets the answer's text, or for a row with tools the whole message."""
    if not params["keep_reasoning"]:
        answers = [[{**a, "content": strip_reasoning(a["content"])} for a in row_answers] for row_answers in answers]
    if params["judge"] == "verifier":
        verify = load_function(params["verifier"], "verifier")
        try:
            return [
                [float(verify(row.data, a if row_tools else a["content"])) for a in row_answers]
                for row, row_tools, row_answers in zip(rows, tools, answers, strict=False)
            ]
        except Exception as e:  # the user's function: say where it broke, in one line
            raise UserError(f"verifier {params['verifier']} failed: {type(e).__name__}: {e}") from None
    flat = [(p, t, a) for p, t, row_answers in zip(prompts, tools, answers, strict=False) for a in row_answers]
    if params["judge"] == "reward_model":
        scores = reward_scores(params["judge_model"], flat, params["trust_remote_code"])
    else:
        judge = (
            backend
            if params["judge_model"] == params["model"]
            else make_backend({**params, "model": params["judge_model"]})
        )
        rubric = params["rubric"]
        asks = [
            Request([{"role": "user", "content": rubric.format(prompt=answer_text(p[-1]), answer=answer_text(a))}], 0)
            for p, _, a in flat
        ]
        replies = gen(judge, asks, {**sampling_of(params), "temperature": 0.0}, "judge")
        scores = [judge_rubric_reply(replies[r.key]["text"]) for r in asks]
    per = params["num_samples"]
    return [scores[i : i + per] for i in range(0, len(scores), per)]


@exit_on_user_error
def main(params: dict) -> None:
    stages, out = check(params), params["output_dir"]
    os.makedirs(out, exist_ok=True)
    save_params(params, out)
    report, tally = DataReport(), Tally()
    generating = stages != ["clean"]
    # Seed rows: read, checked and PII-scrubbed by the pipeline every script uses (common/prepare.py), before any
    # row is sent to a model or written; a clean-only run cleans them in its clean stage instead
    rows = read_rows({**params, "clean": scrub_only(params["clean"])}, prompt_problem, report) if generating else []
    backend = make_backend(params) if generating else None
    cache = RequestCache(os.path.join(out, "requests.sqlite"))
    sampling = sampling_of(params)

    def gen(model, requests, settings, label):
        return generate(model, requests, settings, cache, tally, label, params["progress_bar"])

    def answers_of(rows):  # prompts, tools and num_samples answer messages per row, in row order
        prompts = [prompt_of(r.data, params["system_prompt"]) for r in rows]
        tools = [normalize_tools(r.data.get("tools")) for r in rows]
        requests = [
            Request(p, s, t or None) for p, t in zip(prompts, tools, strict=False) for s in range(params["num_samples"])
        ]
        results = gen(backend, requests, sampling, "answers")
        messages = [answer_message(results[r.key], set(tool_names(r.tools))) for r in requests]
        per = params["num_samples"]
        return prompts, tools, [messages[i : i + per] for i in range(0, len(messages), per)]

    last, written = "clean", 0
    try:
        if "instructions" in stages:
            seeds, wanted = [last_request(r.data) for r in rows], params["num_instructions"] * ATTEMPTS_PER_INSTRUCTION
            if params["instruction_style"] == "magpie":
                tokenizer = getattr(backend, "tokenizer", None) or load_tokenizer(
                    params["model"], params["trust_remote_code"]
                )
                prefix = magpie_prefix(tokenizer, params["system_prompt"])
                requests = [Request(prefix, i) for i in range(wanted)]
            else:
                prompts = self_instruct_prompts(seeds, wanted, params["examples_per_prompt"], params["seed"])
                requests = [Request(p, i) for i, p in enumerate(prompts)]
            results = gen(backend, requests, sampling, "instructions")
            kept = novel(
                [results[r.key]["text"] for r in requests], seeds, params["max_similarity"], params["num_instructions"]
            )
            tools = shared_tools([r.data for r in rows])
            rows = [
                Row(with_tools(tools, {"messages": [{"role": "user", "content": text}]}), f"instructions: {i + 1}")
                for i, text in enumerate(kept)
            ]
            report.counts["instructions"] = {"asked": len(requests), "kept": len(kept)}
            last = "instructions"
            write_rows(os.path.join(out, "instructions.jsonl"), [r.data for r in rows])

        if "responses" in stages:
            prompts, tools, answers = answers_of(rows)
            rows = [
                Row(with_tools(t, {"messages": [*p, a]}), f"responses: {i + 1}")
                for i, (p, t, row_answers) in enumerate(zip(prompts, tools, answers, strict=False))
                for a in row_answers
            ]
            last = "responses"
            write_rows(os.path.join(out, "responses.jsonl"), [r.data for r in rows])

        if "preferences" in stages:
            prompts, tools, answers = answers_of(rows)
            scores = score(params, backend, prompts, tools, answers, rows, gen)
            pairs = [best_and_worst(a, s) for a, s in zip(answers, scores, strict=False)]
            rows = [
                Row(with_tools(t, {"prompt": p, "chosen": [pair[0]], "rejected": [pair[1]]}), f"preferences: {i + 1}")
                for i, (p, t, pair) in enumerate(zip(prompts, tools, pairs, strict=False))
                if pair
            ]
            flat = [s for row_scores in scores for s in row_scores]
            passed = sum(s > 0 for s in flat)
            report.counts["preferences"] = {
                "prompts": len(prompts),
                "samples": len(flat),
                "pairs": len(rows),
                "samples_scoring_above_0": passed,
            }
            print(
                f"judge ({params['judge']}): {passed} of {len(flat)} samples score above 0 "
                f"({passed / max(1, len(flat)):.1%}); "
                f"{len(rows)} of {len(prompts)} prompts give a pair",
                flush=True,
            )
            last = "preferences"
            write_rows(os.path.join(out, "preferences.jsonl"), [r.data for r in rows])

        if "clean" in stages:
            if last != "clean":
                os.replace(os.path.join(out, f"{last}.jsonl"), os.path.join(out, f"{last}.raw.jsonl"))
            by_tokens = params["clean"]["min_tokens"] or params["clean"]["max_tokens"]
            tokenizer = getattr(backend, "tokenizer", None) or (
                load_tokenizer(params["model"], params["trust_remote_code"]) if by_tokens else None
            )
            if last == "clean" or rows:  # generated rows are cleaned from the raw file just written
                source = os.path.join(out, f"{last}.raw.jsonl") if last != "clean" else params["data"]
                rows = read_rows({**params, "data": source}, None, report, tokenizer)
            write_rows(os.path.join(out, f"{last}.jsonl"), [r.data for r in rows])
        written = len(rows)
        print(f"wrote {written} rows to {os.path.join(out, last + '.jsonl')}")
    finally:
        report.counts["requests"] = vars(tally)
        report.write(out)
        cache.close()
        if backend is not None:
            print(f"summary: {tally.line()}; rows kept {written}", flush=True)


if __name__ == "__main__":
    main(resolve(PARAMS, RULES))
