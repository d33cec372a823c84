"""Loss masks on real chat templates: every family in ../shared/real_tokenizers/ and trl/chat_templates/, on
single and multi-turn rows, system turns, reasoning, whitespace, unicode, assistant text repeated in a user turn and
function calling. A row is either masked exactly (checked token by token against the family's TRL training template
where there is one, and on the decoded text always) or refused with a reason; never trained with a wrong mask."""

import re
from pathlib import Path

import pytest

from common.chat.masks import chat_example, rendered_messages, spans, tokenize_chat
from common.chat.native import KEEP_REASONING
from common.chat.reasoning import split_reasoning
from common.chat.template import chat_spec, render
from common.chat.tokenizer import prepare_tokenizer
from common.chat.tools import normalize_tools
from common.errors import RowProblem, UserError
from tests.real_tokenizers import OTHER_FAMILIES, SHARED_FAMILIES, TRL_FAMILIES, TRL_TEMPLATES, load

KEEP_REASONING_TEMPLATES = Path(__file__).resolve().parents[1] / "common" / "chat" / "templates"


def user(text):
    return {"role": "user", "content": text}


def assistant(text, reasoning=None):
    return {"role": "assistant", "content": text, **({"reasoning_content": reasoning} if reasoning else {})}


CALL = 'get_weather(city="Oslo")'
CONVERSATIONS = {
    "single": [user("Name three primary colours."), assistant("Red, yellow and blue.")],
    "system_multi": [
        {"role": "system", "content": "You answer in few words."},
        user("Quelle est la capitale ?"),
        assistant("Paris."),
        user("Und die zweite Stadt?"),
        assistant("Marseille."),
    ],
    "reasoning": [
        user("What is 17 + 25?"),
        assistant("42", reasoning="17 + 25: 7 + 5 = 12, carry 1, so 42."),
        user("And doubled?"),
        assistant("<think>\nTwice 42 is 84.\n</think>\n\n84"),
    ],
    "whitespace": [
        user("  padded request \n"),
        assistant("\n  leading and trailing  \n\n"),
        user("next\n\n"),
        assistant("line one\nline two\n"),
    ],
    "unicode": [user("Ça coûte combien ? 日本語で"), assistant("5 € — 😀 ünïcödé, 価格は五ユーロ")],
    # spaces after Phi-3's <|assistant|> (an added token with rstrip=True) are swallowed into it
    "leading_space": [user("Name a colour."), assistant("  Red."), user("Another?"), assistant("   Green, or blue.")],
    "echo": [user(f"Say exactly {CALL}"), assistant(CALL), user(f"Again: {CALL}"), assistant(CALL)],
}


def call(name, arguments, id=None):
    return {"type": "function", **({"id": id} if id else {}), "function": {"name": name, "arguments": arguments}}


def calls(text, *tool_calls):
    return {"role": "assistant", "content": text, "tool_calls": list(tool_calls)}


def result(id, name, text):
    return {"role": "tool", "tool_call_id": id, "name": name, "content": text}


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": doc,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name."}},
                "required": ["city"],
            },
        },
    }
    for name, doc in (("get_weather", "Weather forecast for a city."), ("get_time", "Local time in a city."))
]
# Call ids are nine letters and digits, the only form Mistral's template takes; call_only has none.
WEATHER, TIME = call("get_weather", {"city": "Oslo"}, "call00001"), call("get_time", {"city": "Lima"}, "call00002")
RAIN, NOON = (
    result("call00001", "get_weather", '{"sky": "drizzle", "celsius": 7}'),
    result("call00002", "get_time", "12:05"),
)
ASK = user("Weather in Oslo, time in Lima?")
# One row per shape of function calling: (messages, tools).
TOOL_CONVERSATIONS = {
    "call_only": ([ASK, calls("", call("get_weather", {"city": "Oslo"}))], TOOLS),
    "text_two_calls": ([ASK, calls("Checking both.", WEATHER, TIME)], TOOLS),
    "text_one_call": ([ASK, calls("Let me look.", WEATHER), RAIN, assistant("Drizzle, 7 °C.")], TOOLS),
    "call_result_answer": ([ASK, calls("", WEATHER), RAIN, assistant("Drizzle, 7 °C.")], TOOLS),
    "two_rounds": (
        [ASK, calls("", WEATHER), RAIN, calls("", TIME), NOON, assistant("Drizzle in Oslo; 12:05 in Lima.")],
        TOOLS,
    ),
    "string_arguments": (
        [ASK, calls("", call("get_weather", '{"city": "Oslo"}', "call00001")), RAIN, assistant("Drizzle, 7 °C.")],
        TOOLS,
    ),
    "system_tools": (
        [
            {"role": "system", "content": "You answer in few words."},
            ASK,
            calls("", WEATHER),
            RAIN,
            assistant("Drizzle, 7 °C."),
        ],
        TOOLS,
    ),
}
ROWS = {**{name: (messages, None) for name, messages in CONVERSATIONS.items()}, **TOOL_CONVERSATIONS}


def refused_tool_rows(families, reason, rows=tuple(TOOL_CONVERSATIONS)):
    return {(family, row): reason for family in families for row in rows}


# A fixture family's name among TRL's templates: Qwen2.5 renders as TRL's original on every probe, Phi-3.5 is it.
TRAINING_OF = {"qwen2.5": "qwen2_5", "phi3.5": "phi3_5"}
# Rows a family's template cannot render: refused with this reason (the run stops or counts them), never trained.
REFUSED = {
    # vision templates read content as a list of blocks: a string's text is not rendered
    **{(f"trl-{f}", "*"): "the chat template" for f in ("idefics3", "llava_next", "smolvlm")},
    ("trl-deepseekv3", "reasoning"): "does not show reasoning",  # it drops everything before </think>
    # thinking shown only after the last user turn (in TRL's training variants too): an earlier turn's reasoning
    # would vanish unnoticed
    **{
        (f, "reasoning"): "drops the reasoning"
        for f in TRL_FAMILIES
        if f.removeprefix("trl-").startswith(("diffusion_gemma", "glm4moe", "gptoss", "lfm2_2_5", "nemotron"))
    },
    # Gemma 4 (no training variant in TRL: prefix masks): its last revision shows reasoning_content only after the
    # last user turn, so an earlier turn's reasoning leaves later prefixes; the earlier revisions show no
    # reasoning_content, so reasoning goes inline into the content as with any template that prints content as it is
    ("trl-gemma4_v5", "reasoning"): "not prefix-stable",
    # Mistral writes the system prompt into the user turn only while that turn is the conversation's last
    ("other-mistral", "system_multi"): "not prefix-stable",
    ("other-mistral", "system_tools"): "not prefix-stable",
    # Mistral takes only nine-character call ids (call_only has none) and drops text next to calls
    ("other-mistral", "call_only"): "Tool call IDs should be alphanumeric strings with length 9",
    ("other-mistral", "text_two_calls"): "does not show the text next to the tool calls",
    # plain ChatML (no longer taken for Qwen3-2507, which renders tools): the "\n" ending the generation prompt and
    # the answer's leading "\n" merge into one token
    ("other-chatml", "whitespace"): "not prefix-stable",
    # templates that leave out the tool schemas: DeepSeek-V3 and R1 render no tools at all, nor do Llama 3.0,
    # Gemma 1 to 3, Phi-3, Cohere, Qwen2.5-VL, the other vision templates and the plain ones
    **refused_tool_rows(
        [
            "llama3",
            "phi3",
            "phi3.5",
            "other-chatml",
            "other-zephyr",
            *(
                f"trl-{f}"
                for f in (
                    "cohere",
                    "cohere2",
                    "deepseek_r1_distill",
                    "deepseekv3",
                    "gemma",
                    "gemma3",
                    "idefics3",
                    "llama3",
                    "llava_next",
                    "phi3",
                    "phi3_5",
                    "qwen2_5_vl",
                    "smolvlm",
                )
            ),
        ],
        "does not show the row's tools",
    ),
    # SmolLM3 and LFM2's first template expect calls written into the content: tool_calls are not rendered
    **refused_tool_rows(["smollm3", "trl-lfm2"], "does not show tool calls"),
    # one call per turn: Llama 3.1 and 3.2 raise on more, gpt-oss shows the first
    **refused_tool_rows(
        ["trl-gptoss", "trl-llama3_1", "trl-llama3_2"], "takes one tool call per assistant turn", ["text_two_calls"]
    ),
    # text next to calls: dropped (and gpt-oss drops it when a final answer follows)
    **refused_tool_rows(
        ["trl-gptoss", "trl-llama3_1", "trl-llama3_2", "trl-muse_glimmer", "other-mistral"],
        "does not show the text next to the tool calls",
        ["text_one_call"],
    ),
    ("trl-muse_glimmer", "text_two_calls"): "does not show the text next to the tool calls",
    # text next to a call goes after the call's results once they follow: Gemma 4's rendering of the turn then changes
    # (not prefix-stable), and DiffusionGemma's leaves the text unterminated before a new turn (two spans, one turn)
    **refused_tool_rows(
        [f for f in TRL_FAMILIES if f.startswith("trl-gemma4") and f != "trl-gemma4_v2"],
        "not prefix-stable",
        ["text_one_call"],
    ),
    ("trl-diffusion_gemma", "text_one_call"): "a span of its own",
}
# TRL's DiffusionGemma training variant counts the <|tool_response> that ends a turn of calls as the environment's and
# leaves it out of the loss, so there a call turn's span ends on the call (or the text after it), not on a stop token.
CALL_STOP_UNTRAINED = {"trl-diffusion_gemma"}
# What a family trains of a row's last assistant turn: the eight families of the issue on system_multi, and where the
# spaces an answer starts with go (into Phi-3's <|assistant|>, which stays untrained; kept on Llama-3's vocabulary).
GOLDEN = {
    "system_multi": {
        "qwen3": "<think>\n\n</think>\n\nMarseille.<|im_end|>\n",
        "qwen2.5": "\nMarseille.<|im_end|>\n",
        "trl-deepseek_r1_distill": "</think>\n\nMarseille.<｜end▁of▁sentence｜>",
        "trl-llama3_2": "Marseille.<|eot_id|>",
        "trl-gemma3": "Marseille.<end_of_turn>\n",
        "trl-gemma": "Marseille.<end_of_turn>\n",
        "trl-phi3_5": "Marseille.<|end|>\n<|end_of_text|>",
        "smollm3": "<|im_start|>assistant\nMarseille.<|im_end|>\n",
    },
    "leading_space": {
        "phi3": "Green, or blue.<|end|><|endoftext|>",
        "phi3.5": "Green, or blue.<|end|><|endoftext|>",
        "trl-phi3_5": "   Green, or blue.<|end|>\n<|end_of_text|>",
        "qwen3": "<think>\n\n</think>\n\n   Green, or blue.<|im_end|>\n",
    },
}


def expected_training_template(family, reasoning="keep"):
    name = TRAINING_OF.get(family, family).removeprefix("trl-")
    if reasoning == "keep" and name in KEEP_REASONING:
        return (KEEP_REASONING_TEMPLATES / KEEP_REASONING[name]).read_text(encoding="utf-8")
    path = TRL_TEMPLATES / f"{name}_training.jinja"
    return path.read_text(encoding="utf-8") if path.exists() else None


def schema_texts(tools):
    return [
        text
        for tool in normalize_tools(tools)
        for text in (
            tool["function"]["description"],
            *(p["description"] for p in tool["function"]["parameters"]["properties"].values()),
        )
    ]


def check_exact(tokenizer, spec, family, messages, input_ids, labels, tools=None):
    prepared = rendered_messages(messages, spec, normalize_tools(tools))
    mask = [int(label != -100) for label in labels]
    added = set(tokenizer.get_added_vocab().values())
    # an added token the generation prompt ends on is the role token: prompt, never trained
    header = tokenizer.apply_chat_template([user("x")], add_generation_prompt=True)["input_ids"][-1]
    assert header not in added or not any(m and t == header for m, t in zip(mask, input_ids, strict=True))
    training = expected_training_template(family, spec.reasoning)
    if training is not None:  # token by token against the family's training template
        out = tokenizer.apply_chat_template(
            prepared,
            tools=normalize_tools(tools) or None,
            chat_template=training,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert list(out["input_ids"]) == input_ids
        # transformers' mask also trains the token holding a block's first character when it starts before the
        # block: the role token (Phi-3's <|assistant|> swallows the spaces an answer starts with) or whitespace
        # merged across the block's start; the rest of the turn is trained alike
        theirs = list(out["assistant_masks"])
        for i in (i for i, (a, b) in enumerate(zip(mask, theirs, strict=True)) if a != b):
            assert theirs[i] and not (i and theirs[i - 1]) and mask[i + 1], i
            assert input_ids[i] == header or not tokenizer.decode([input_ids[i]]).strip(), i
    turns = [m for m in messages if m["role"] == "assistant"]
    found = spans(mask)
    assert len(found) == len(turns), [tokenizer.decode(input_ids[a:b]) for a, b in found]
    # nothing of a user, system or tool turn, nor of the schemas
    others = [m["content"].strip() for m in messages if m["role"] != "assistant"] + schema_texts(tools)
    for (start, end), turn in zip(found, turns, strict=False):
        text = tokenizer.decode(input_ids[start:end])
        reasoning, answer = split_reasoning(turn)
        assert answer.strip() in text
        assert all(c["function"]["name"] in text for c in turn.get("tool_calls") or []), text
        assert (reasoning.strip() in text) == (spec.reasoning == "keep") or not reasoning.strip()
        rest = text.replace(answer.strip(), "").replace(reasoning.strip(), "")
        assert not any(other in rest for other in others if other), rest
        if training is None:  # and no role header of another turn
            assert "user" not in rest.lower(), rest
        if turn.get("tool_calls") and family in CALL_STOP_UNTRAINED:
            continue
        ending = [t for t in input_ids[start:end] if tokenizer.decode([t]).strip()][-1]
        assert ending in added, f"span ends on {tokenizer.decode([ending])!r}, not an end-of-turn token"
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("real_tokenizers")


@pytest.mark.parametrize("family", SHARED_FAMILIES + TRL_FAMILIES + OTHER_FAMILIES)
def test_native_masks_are_exact_or_refused(family, root):
    tokenizer = load(family, root)
    spec = prepare_tokenizer(tokenizer, "native")
    for name, (messages, tools) in ROWS.items():
        refused = REFUSED.get((family, name)) or REFUSED.get((family, "*"))
        if refused:
            with pytest.raises(RowProblem, match=refused):
                tokenize_chat(tokenizer, messages, "all_assistant", spec, tools)
            continue
        input_ids, labels = tokenize_chat(tokenizer, messages, "all_assistant", spec, tools)
        found = check_exact(tokenizer, spec, family, messages, input_ids, labels, tools)
        if family in GOLDEN.get(name, {}):
            assert tokenizer.decode(input_ids[found[-1][0] : found[-1][1]]) == GOLDEN[name][family]
        _, last = tokenize_chat(tokenizer, messages, "last_assistant", spec, tools)
        assert spans([int(x != -100) for x in last]) == found[-1:]


@pytest.mark.parametrize(
    "family, generated",
    [
        (
            "qwen3",
            '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call><|im_end|>',
        ),  # trained with TRL's variant
        ("trl-llama3_2", '{"name": "f", "parameters": {"a": 1}}<|eot_id|>'),  # its own template, prefix masks
    ],
)
def test_native_tokenizer_parses_generated_calls(family, generated, root):
    tokenizer = load(family, root)
    prepare_tokenizer(tokenizer, "native")
    assert tokenizer.parse_response(generated, prefix="")["tool_calls"] == [
        {"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
    ]


def test_arguments_reach_a_template_in_the_form_it_takes(root):
    """DeepSeek-V3's own template joins arguments as text and raises TypeError on a dict: they go as JSON text."""
    tokenizer = load("trl-deepseekv3", root)  # its original, before prepare_tokenizer swaps in TRL's variant
    spec = chat_spec(tokenizer, "")
    assert spec.call_arguments == "string"
    messages = rendered_messages(TOOL_CONVERSATIONS["call_result_answer"][0], spec, [])
    assert '<｜tool▁sep｜>get_weather\n```json\n{"city": "Oslo"}\n```' in render(tokenizer, messages)


@pytest.mark.parametrize("family", ["qwen3", "trl-deepseek_r1_distill", "trl-llama3_2"])
def test_reasoning_drop_removes_it_everywhere(family, root):
    tokenizer = load(family, root)
    spec = prepare_tokenizer(tokenizer, "native", reasoning="drop")
    input_ids, labels = tokenize_chat(tokenizer, CONVERSATIONS["reasoning"], "all_assistant", spec)
    text = tokenizer.decode(input_ids)
    assert "carry 1" not in text and "Twice 42" not in text
    check_exact(tokenizer, spec, family, CONVERSATIONS["reasoning"], input_ids, labels)


@pytest.mark.parametrize(
    "row, trained",
    [
        (
            "reasoning",
            [
                "17 + 25: 7 + 5 = 12, carry 1, so 42.\n</think>\n\n42<｜end▁of▁sentence｜>",
                "Twice 42 is 84.\n</think>\n\n84<｜end▁of▁sentence｜>",
            ],
        ),
        ("system_multi", ["</think>\n\nParis.<｜end▁of▁sentence｜>", "</think>\n\nMarseille.<｜end▁of▁sentence｜>"]),
    ],
)
def test_r1_distill_keeps_reasoning_on_every_turn_and_prompts_as_at_inference(row, trained, root):
    """reasoning=keep on DeepSeek-R1-Distill trains, on every assistant turn, what the model writes after its
    generation prompt <｜Assistant｜><think>\n: the reasoning, </think>, the answer and end of sentence. At inference
    the model's own template drops earlier turns' reasoning and the model writes only the last turn's, so a turn's
    prompt in training is the prompt at inference plus the earlier turns' think blocks (the first turn's: the same
    tokens)."""
    tokenizer = load("trl-deepseek_r1_distill", root)
    original = tokenizer.chat_template
    spec = prepare_tokenizer(tokenizer, "native")
    assert spec.source.startswith("common/chat/templates/deepseek_r1_distill_keep_reasoning.jinja")
    messages = CONVERSATIONS[row]
    input_ids, labels = tokenize_chat(tokenizer, messages, "all_assistant", spec)
    found = spans([int(x != -100) for x in labels])
    assert [tokenizer.decode(input_ids[a:b]) for a, b in found] == trained
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    prompt = tokenizer.apply_chat_template(messages[: turns[0]], chat_template=original, add_generation_prompt=True)
    assert input_ids[: found[0][0]] == list(prompt["input_ids"])
    earlier_reasoning = re.compile(r"<think>\n.*?</think>\n\n", re.S)
    for (start, _), turn in zip(found, turns, strict=True):
        assert earlier_reasoning.sub("", tokenizer.decode(input_ids[:start])) == render(
            tokenizer, messages[:turn], original, generation_prompt=True
        )


@pytest.mark.parametrize("family", SHARED_FAMILIES)
def test_special_tokens_exact_on_real_vocabularies(family, root):
    tokenizer = load(family, root)
    spec = prepare_tokenizer(tokenizer, "special_tokens")
    for messages in CONVERSATIONS.values():
        input_ids, labels = tokenize_chat(tokenizer, messages, "all_assistant", spec)
        found = spans([int(x != -100) for x in labels])
        expected = []
        for turn in (m for m in messages if m["role"] == "assistant"):
            reasoning, answer = split_reasoning(turn)
            expected.append((f"<think>{reasoning.strip()}</think>" if reasoning else "") + answer + "<eot>")
        # decoded in context: a SentencePiece decoder drops the leading space of a piece decoded alone
        in_context = [tokenizer.decode(input_ids[:b])[len(tokenizer.decode(input_ids[:a])) :] for a, b in found]
        assert in_context == expected


def test_gemma_folds_the_system_turn_and_counts_it(root):
    tokenizer = load("trl-gemma", root)
    spec = prepare_tokenizer(tokenizer, "native")
    assert spec.fold_system
    [example], counts = chat_example(tokenizer, spec, "all_assistant", {"messages": CONVERSATIONS["system_multi"]})
    assert "<start_of_turn>user\nYou answer in few words.\n\nQuelle est la capitale ?" in tokenizer.decode(
        example["input_ids"]
    )
    assert counts == {"system_turns_folded_into_user": 1}
    assert chat_example(tokenizer, spec, "all_assistant", {"messages": CONVERSATIONS["single"]})[1] == {}


def test_a_row_the_template_rejects_is_a_row_problem(root):
    tokenizer = load("trl-gemma", root)
    spec = prepare_tokenizer(tokenizer, "native")
    with pytest.raises(RowProblem, match=r"^the chat template rejects this row: Conversation roles must alternate"):
        chat_example(tokenizer, spec, "all_assistant", {"messages": [user("a"), user("b"), assistant("c")]})


@pytest.mark.parametrize(
    "family, edit, at_start",
    [
        # Qwen3's template with one byte changed and a system header TRL's copy lacks: unknown. A single turn masks
        # exactly, but it drops the think block of earlier assistant turns, so a multi-turn row is refused.
        ("qwen3", lambda t: t.replace("'<|im_start|>system\\n'", "'<|im_start|>system\\n# '"), False),
        # DeepSeek-R1's, edited in its user header so TRL does not know it: its generation prompt ends in <think>\n,
        # which the rendered answer lacks, so not even a single turn masks exactly. (A byte edit that renders the
        # same is still recognised.)
        (
            "trl-deepseek_r1_distill",
            lambda t: t.replace("{{'<｜User｜>' + message['content']}}", "{{'<｜User｜> ' + message['content']}}"),
            True,
        ),
    ],
)
def test_unknown_template_that_is_not_prefix_stable_stops_with_the_fix(family, edit, at_start, root):
    tokenizer = load(family, root)
    edited = edit(tokenizer.chat_template)
    assert edited != tokenizer.chat_template
    tokenizer.chat_template = edited
    if at_start:
        with pytest.raises(UserError) as stop:
            prepare_tokenizer(tokenizer, "native")
    else:
        spec = prepare_tokenizer(tokenizer, "native")
        assert spec.prefix_masks
        input_ids, labels = tokenize_chat(tokenizer, CONVERSATIONS["single"], "all_assistant", spec)
        assert [tokenizer.decode(input_ids[a:b]) for a, b in spans([int(x != -100) for x in labels])] == [
            "<think>\n\n</think>\n\nRed, yellow and blue.<|im_end|>\n"
        ]
        with pytest.raises(RowProblem) as stop:
            tokenize_chat(tokenizer, CONVERSATIONS["system_multi"], "all_assistant", spec)
    message = str(stop.value)
    assert "prefix" in message and "chat_template=" in message and "chat_format=special_tokens" in message
    assert "\n" not in message


def test_own_markers_that_leave_out_the_end_of_turn_token_are_used_with_a_warning(root):
    tokenizer = load("other-chatml", root)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}",
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
        "{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>\\n' }}{% else %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}",
    )
    spec = prepare_tokenizer(tokenizer, "native")
    assert "its own {% generation %} markers (warning: they leave out the end-of-turn token" in spec.source
