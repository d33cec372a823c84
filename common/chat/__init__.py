"""Chat rows to tokens, in the order a run uses them:

rows.py        what a chat row must hold (roles, content, tool calls, tool results, reasoning)
tools.py       tools and tool calls in the OpenAI / TRL form, normalized
reasoning.py   reasoning_content and <think> blocks, kept or dropped
own_format.py  chat_format=special_tokens: the <system> <user> <assistant> template, its parser, function tokens
template.py    how a template renders rows (ChatSpec), found by probing it
native.py      chat_format=native: which template trains (TRL's training variant, own markers, prefix rendering)
templates/     our training variants, where TRL's does not train what the model generates (R1-distill's reasoning)
masks.py       input_ids and labels from a template, exact or refused with the reason
tokenizer.py   the tokenizer given its chat format, pad token and end-of-turn ids
"""
