"""Loss masks on real chat templates: every family in ../shared/real_tokenizers/ and trl/chat_templates/, on
single and multi-turn rows, system turns, reasoning, whitespace, unicode and assistant text repeated in a user
turn. A row is either masked exactly (checked token by token against the family's TRL training template where
there is one, and on the decoded text always) or refused with a reason; never trained with a wrong mask."""

import pytest

from common.chat_format import prepare_tokenizer
from common.chat_masks import chat_examples, spans, tokenize_chat
from common.chat_templates import prepare_messages
from common.data import DataReport, Row
from common.errors import RowProblem, UserError
from common.reasoning import split_reasoning, with_reasoning
from tests.real_tokenizers import OTHER_FAMILIES, SHARED_FAMILIES, TRL_FAMILIES, TRL_TEMPLATES, load


def user(text):
    return {"role": "user", "content": text}


def assistant(text, reasoning=None):
    return {"role": "assistant", "content": text, **({"reasoning_content": reasoning} if reasoning else {})}


CALL = 'get_weather(city="Oslo")'
CONVERSATIONS = {
    "single": [user("Name three primary colours."), assistant("Red, yellow and blue.")],
    "system_multi": [{"role": "system", "content": "You answer in few words."}, user("Quelle est la capitale ?"),
                     assistant("Paris."), user("Und die zweite Stadt?"), assistant("Marseille.")],
    "reasoning": [user("What is 17 + 25?"), assistant("42", reasoning="17 + 25: 7 + 5 = 12, carry 1, so 42."),
                  user("And doubled?"), assistant("<think>\nTwice 42 is 84.\n</think>\n\n84")],
    "whitespace": [user("  padded request \n"), assistant("\n  leading and trailing  \n\n"), user("next\n\n"),
                   assistant("line one\nline two\n")],
    "unicode": [user("Ça coûte combien ? 日本語で"), assistant("5 € — 😀 ünïcödé, 価格は五ユーロ")],
    "echo": [user(f"Say exactly {CALL}"), assistant(CALL), user(f"Again: {CALL}"), assistant(CALL)],
}
# A family without a training variant of its own that renders as another family's original on every probe.
TRAINING_OF = {"qwen2.5": "qwen2_5", **{f: "diffusion_gemma" for f in TRL_FAMILIES if f.startswith("trl-gemma4")}}
# Rows a family's template cannot render: refused with this reason (the run stops or counts them), never trained.
REFUSED = {
    # vision templates read content as a list of blocks: a string's text is not rendered
    **{(f"trl-{f}", "*"): "the chat template" for f in ("idefics3", "llava_next", "smolvlm")},
    ("trl-deepseekv3", "reasoning"): "does not show reasoning",  # it drops everything before </think>
    # thinking shown only after the last user turn (in TRL's training variants too): an earlier turn's reasoning
    # would vanish unnoticed
    **{(f, "reasoning"): "drops the reasoning" for f in TRL_FAMILIES
       if f.removeprefix("trl-").startswith(("gemma4", "diffusion_gemma", "glm4moe", "gptoss", "lfm2_2_5", "nemotron"))},
    # the system prompt moves to the last user turn, so an earlier turn's prefix is not a prefix of the row
    ("other-mistral", "system_multi"): "not prefix-stable",
}
# What the eight families of the issue train on the system_multi row (the second assistant turn).
GOLDEN = {
    "qwen3": "<think>\n\n</think>\n\nMarseille.<|im_end|>\n",
    "qwen2.5": "\nMarseille.<|im_end|>\n",
    "trl-deepseek_r1_distill": "<｜Assistant｜>Marseille.<｜end▁of▁sentence｜>",
    "trl-llama3_2": "Marseille.<|eot_id|>",
    "trl-gemma3": "Marseille.<end_of_turn>\n",
    "trl-gemma": "Marseille.<end_of_turn>\n",
    "trl-phi3_5": "Marseille.<|end|>\n<|end_of_text|>",
    "smollm3": "<|im_start|>assistant\nMarseille.<|im_end|>\n",
}


def expected_training_template(family):
    path = TRL_TEMPLATES / f"{TRAINING_OF.get(family, family).removeprefix('trl-')}_training.jinja"
    return path.read_text(encoding="utf-8") if path.exists() else None


def check_exact(tokenizer, spec, family, messages, input_ids, labels):
    prepared = prepare_messages(with_reasoning(messages, spec.reasoning), spec)
    mask = [int(label != -100) for label in labels]
    training = expected_training_template(family)
    if training is not None:  # token by token against the family's training template
        out = tokenizer.apply_chat_template(prepared, chat_template=training, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        assert list(out["input_ids"]) == input_ids and list(out["assistant_masks"]) == mask
    turns = [m for m in messages if m["role"] == "assistant"]
    found = spans(mask)
    assert len(found) == len(turns), [tokenizer.decode(input_ids[a:b]) for a, b in found]
    added = set(tokenizer.get_added_vocab().values())
    others = [m["content"].strip() for m in messages if m["role"] != "assistant"]
    for (start, end), turn in zip(found, turns):
        text = tokenizer.decode(input_ids[start:end])
        reasoning, answer = split_reasoning(turn)
        assert answer.strip() in text
        assert (reasoning.strip() in text) == (spec.reasoning == "keep") or not reasoning.strip()
        rest = text.replace(answer.strip(), "").replace(reasoning.strip(), "")
        assert not any(other in rest for other in others if other), rest  # nothing of a user or system turn
        if training is None:  # and no role header of another turn
            assert "user" not in rest.lower(), rest
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
    for name, messages in CONVERSATIONS.items():
        refused = REFUSED.get((family, name)) or REFUSED.get((family, "*"))
        if refused:
            with pytest.raises(RowProblem, match=refused):
                tokenize_chat(tokenizer, messages, "all_assistant", spec)
            continue
        input_ids, labels = tokenize_chat(tokenizer, messages, "all_assistant", spec)
        found = check_exact(tokenizer, spec, family, messages, input_ids, labels)
        if name == "system_multi" and family in GOLDEN:
            assert tokenizer.decode(input_ids[found[-1][0]:found[-1][1]]) == GOLDEN[family]
        _, last = tokenize_chat(tokenizer, messages, "last_assistant", spec)
        assert spans([int(x != -100) for x in last]) == found[-1:]


@pytest.mark.parametrize("family", ["qwen3", "trl-deepseek_r1_distill", "trl-llama3_2"])
def test_reasoning_drop_removes_it_everywhere(family, root):
    tokenizer = load(family, root)
    spec = prepare_tokenizer(tokenizer, "native", reasoning="drop")
    input_ids, labels = tokenize_chat(tokenizer, CONVERSATIONS["reasoning"], "all_assistant", spec)
    text = tokenizer.decode(input_ids)
    assert "carry 1" not in text and "Twice 42" not in text
    check_exact(tokenizer, spec, family, CONVERSATIONS["reasoning"], input_ids, labels)


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
        assert [tokenizer.decode(input_ids[a:b]) for a, b in found] == expected


def test_gemma_folds_the_system_turn_and_counts_it(root):
    tokenizer = load("trl-gemma", root)
    spec = prepare_tokenizer(tokenizer, "native")
    assert spec.fold_system
    report = DataReport()
    rows = [Row({"messages": CONVERSATIONS["system_multi"]}, "chats.jsonl:1"), Row({"messages": CONVERSATIONS["single"]}, "chats.jsonl:2")]
    (input_ids, _), _ = list(chat_examples(tokenizer, rows, spec, "all_assistant", "error", report))
    assert "<start_of_turn>user\nYou answer in few words.\n\nQuelle est la capitale ?" in tokenizer.decode(input_ids)
    assert report.counts["system_turns_folded_into_user"] == 1


def test_a_row_the_template_rejects_stops_with_its_line_or_is_counted(root):
    tokenizer = load("trl-gemma", root)
    spec = prepare_tokenizer(tokenizer, "native")
    rows = [Row({"messages": [user("a"), user("b"), assistant("c")]}, "chats.jsonl:7")]
    with pytest.raises(UserError, match=r"^chats.jsonl:7: the chat template rejects this row: Conversation roles must alternate"):
        list(chat_examples(tokenizer, rows, spec, "all_assistant", "error", DataReport()))
    report = DataReport()
    assert list(chat_examples(tokenizer, rows, spec, "all_assistant", "skip", report)) == []
    assert list(report.dropped.values()) == [1] and "roles must alternate" in next(iter(report.dropped))


@pytest.mark.parametrize("family, edit, at_start", [
    # Qwen3's template with one byte changed and a system header TRL's copy lacks: unknown. A single turn masks
    # exactly, but it drops the think block of earlier assistant turns, so a multi-turn row is refused.
    ("qwen3", lambda t: t.replace("'<|im_start|>system\\n'", "'<|im_start|>system\\n# '"), False),
    # DeepSeek-R1's, edited in its user header so TRL does not know it: its generation prompt ends in <think>\n,
    # which the rendered answer lacks, so not even a single turn masks exactly. (A byte edit that renders the
    # same is still recognised.)
    ("trl-deepseek_r1_distill", lambda t: t.replace("{{'<｜User｜>' + message['content']}}", "{{'<｜User｜> ' + message['content']}}"), True),
])
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
            "<think>\n\n</think>\n\nRed, yellow and blue.<|im_end|>\n"]
        with pytest.raises(RowProblem) as stop:
            tokenize_chat(tokenizer, CONVERSATIONS["system_multi"], "all_assistant", spec)
    message = str(stop.value)
    assert "prefix" in message and "chat_template=" in message and "chat_format=special_tokens" in message
    assert "\n" not in message


def test_own_markers_that_leave_out_the_end_of_turn_token_are_used_with_a_warning(root):
    tokenizer = load("other-chatml", root)
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}",
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] }}"
        "{% endgeneration %}{{ '<|im_end|>\\n' }}{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}")
    spec = prepare_tokenizer(tokenizer, "native")
    assert "its own {% generation %} markers (warning: they leave out the end-of-turn token" in spec.source
