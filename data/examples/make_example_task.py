#!/usr/bin/env python
"""Generate the shipped example task: on-device function calling.

A user request in plain English goes in; exactly one compact, Python-like
function call comes out, e.g.

    "What's the weather in Paris tomorrow?" -> get_weather(city="Paris", day="tomorrow")

Slot values (cities, names, numbers, ...) are copied verbatim from the request
into the call, and answers are graded by exact string match (see verify.py).

Deterministic (fixed seed, standard library only). Run from anywhere:

    python data/examples/make_example_task.py

Writes, next to this file:
    chat_train.jsonl / chat_test.jsonl              {"messages": [...]}
    completion_train.jsonl / completion_test.jsonl  {"prompt": ..., "completion": ...}
    preference_train.jsonl / preference_test.jsonl  {"prompt": [...], "chosen": [...], "rejected": [...]}
                                                    (chosen: the right call; rejected: one slot wrong)
    tools_train.jsonl / tools_test.jsonl            {"tools": [...], "messages": [...]}, OpenAI / TRL function
                                                    calling: the six functions as JSON-schema tools, and each
                                                    request answered by one tool call with the same slot values
                                                    (numbers as JSON numbers); about a fifth of the training
                                                    rows go on with the tool's result and a short reply

The test split is held out: its 200 requests are distinct, and no test request
string appears anywhere in the training data (including second turns of
multi-turn rows). Training requests may repeat, as in real traffic. The tool
files hold the same requests as the completion files, train and test alike, so
tools_test.jsonl asks exactly what chat_test.jsonl asks.
"""

import ast
import json
import random
from pathlib import Path

SEED = 1234
N_TRAIN = 1500
N_TEST = 200
N_PREFERENCE_TRAIN = 600
SYSTEM_FRACTION = 0.2
MULTI_TURN_FRACTION = 0.05
SYSTEM_PROMPTS = [
    "You are an assistant that answers with one function call.",
    "Answer with a single function call.",
    "You turn requests into function calls.",
]

OUT_DIR = Path(__file__).resolve().parent

# ---------------------------------------------------------------- slot values
CITIES = [
    "Paris",
    "London",
    "Berlin",
    "Madrid",
    "Rome",
    "Tokyo",
    "Lisbon",
    "Oslo",
    "Dublin",
    "Vienna",
    "Prague",
    "Cairo",
    "Lima",
    "Seoul",
    "Sydney",
    "Boston",
    "Chicago",
    "Denver",
    "Toronto",
    "Nairobi",
    "Mumbai",
    "Athens",
    "Warsaw",
    "Zurich",
    "Munich",
    "Osaka",
    "Quito",
    "Dakar",
    "Hanoi",
    "Manila",
    "New York",
    "Cape Town",
    "São Paulo",
    "Buenos Aires",
    "Mexico City",
]
DAYS = [
    "today",
    "tomorrow",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
]
CONTACTS = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Emma",
    "Felix",
    "Grace",
    "Hugo",
    "Ines",
    "Jack",
    "Kate",
    "Leo",
    "Maria",
    "Nina",
    "Omar",
    "Paul",
    "Rosa",
    "Sam",
    "Tom",
    "Vera",
    "Yusuf",
    "Zoe",
    "Mom",
    "Dad",
]
TEXTS = [
    "running late",
    "see you soon",
    "call me back",
    "on my way",
    "happy birthday",
    "I am home",
    "thanks a lot",
    "dinner is ready",
    "good night",
    "meeting moved",
    "be there at six",
    "love you",
    "no problem",
    "where are you",
    "bring the keys",
]
ARTISTS = [
    "Adele",
    "Beyonce",
    "Coldplay",
    "Drake",
    "Eminem",
    "Queen",
    "Madonna",
    "Shakira",
    "Rihanna",
    "Metallica",
    "Radiohead",
    "Nirvana",
    "ABBA",
    "Muse",
    "Sting",
    "Prince",
    "Bob Marley",
    "Daft Punk",
    "Taylor Swift",
    "Ed Sheeran",
    "Miles Davis",
    "Billie Eilish",
    "The Beatles",
    "Pink Floyd",
    "Norah Jones",
    "Elvis",
    "Oasis",
    "Blur",
    "Bjork",
    "Sade",
    "Moby",
    "Lorde",
    "Sia",
    "Dua Lipa",
    "Bruno Mars",
    "Lady Gaga",
    "Bon Jovi",
    "Green Day",
    "Kanye West",
    "Frank Ocean",
]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "INR", "CNY", "BRL"]
TITLES = [
    "dentist",
    "team meeting",
    "lunch with Sara",
    "gym",
    "haircut",
    "project review",
    "yoga class",
    "doctor",
    "date night",
    "book club",
    "piano lesson",
    "standup",
    "car service",
    "parent meeting",
    "flight",
]
TIMES = [
    "8am",
    "9am",
    "10am",
    "11am",
    "noon",
    "1pm",
    "2pm",
    "3pm",
    "4pm",
    "5pm",
    "6pm",
    "7pm",
    "8pm",
    "9:30am",
    "10:15am",
    "2:30pm",
    "5:45pm",
    "7:30pm",
]


# Numbers people say to an assistant; each is one token of the built-in tokenizer, so the tiny model
# copies them like names (digit-by-digit copying of arbitrary numbers is what a 1M-parameter model
# learns last, and the demo should finish in minutes).
MINUTES = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 45, 50, 60, 90, 120]
AMOUNTS = [1, 5, 10, 15, 20, 25, 30, 40, 50, 75, 80, 100, 120, 150, 200, 250, 300, 500, 750, 1000, 2000, 5000]


def minutes(rng):
    return str(rng.choice(MINUTES))


def amount(rng):
    return str(rng.choice(AMOUNTS))


def pair(rng):
    return rng.sample(CURRENCIES, 2)


def day_phrase(day):
    # "today"/"tomorrow" read naturally bare; weekdays take "on".
    return day if day in ("today", "tomorrow") else "on " + day


# ------------------------------------------------------------------ functions
# Each function: (sampler returning a slot dict, request templates, call builder).
# Template placeholders are filled with the exact strings that go into the call.


def q(s):
    return '"' + s + '"'


FUNCTIONS = {
    "get_weather": (
        lambda rng: {"city": rng.choice(CITIES), "day": rng.choice(DAYS)},
        [
            "What's the weather in {city} {dayp}?",
            "Weather for {city} {dayp}",
            "Will it rain in {city} {dayp}?",
            "How hot is it in {city} {dayp}?",
            "Forecast {city} {day}",
            "Is it sunny in {city} {dayp}?",
            "Check the weather {dayp} in {city}",
        ],
        lambda s: f"get_weather(city={q(s['city'])}, day={q(s['day'])})",
    ),
    "set_timer": (
        lambda rng: {"minutes": minutes(rng)},
        [
            "Set a timer for {minutes} minutes",
            "Start a {minutes} minute timer",
            "Timer {minutes} min",
            "Countdown of {minutes} minutes please",
            "Alert me in {minutes} minutes",
            "Can you time {minutes} minutes?",
        ],
        lambda s: f"set_timer(minutes={s['minutes']})",
    ),
    "send_message": (
        lambda rng: {"contact": rng.choice(CONTACTS), "text": rng.choice(TEXTS)},
        [
            "Text {contact}: {text}",
            "Send {contact} a message saying {text}",
            "Tell {contact} {text}",
            "Message {contact} that {text}",
            "Write to {contact}: {text}",
            "Let {contact} know: {text}",
        ],
        lambda s: f"send_message(contact={q(s['contact'])}, text={q(s['text'])})",
    ),
    "play_music": (
        lambda rng: {"artist": rng.choice(ARTISTS)},
        [
            "Play {artist}",
            "Put on some {artist}",
            "I want to hear {artist}",
            "Play music by {artist}",
            "Can you play {artist} please?",
            "Start some {artist} songs",
        ],
        lambda s: f"play_music(artist={q(s['artist'])})",
    ),
    "convert_currency": (
        lambda rng: dict(zip(("amount", "source", "target"), [amount(rng)] + pair(rng), strict=False)),
        [
            "Convert {amount} {source} to {target}",
            "How much is {amount} {source} in {target}?",
            "{amount} {source} to {target}",
            "What are {amount} {source} worth in {target}?",
            "Exchange {amount} {source} into {target}",
            "Change {amount} {source} to {target} please",
        ],
        lambda s: f"convert_currency(amount={s['amount']}, source={q(s['source'])}, target={q(s['target'])})",
    ),
    "add_event": (
        lambda rng: {"title": rng.choice(TITLES), "day": rng.choice(DAYS), "time": rng.choice(TIMES)},
        [
            "Add {title} {dayp} at {time}",
            "Schedule {title} {dayp} at {time}",
            "Put {title} in my calendar {dayp} at {time}",
            "Book {title} for {day} at {time}",
            "New event: {title}, {day}, {time}",
            "Remind me of {title} {dayp} at {time}",
        ],
        lambda s: f"add_event(title={q(s['title'])}, day={q(s['day'])}, time={q(s['time'])})",
    ),
}
FUNCTION_NAMES = sorted(FUNCTIONS)


def sample_pair(rng):
    """One (request, call) pair from a random function and template."""
    sampler, templates, build = FUNCTIONS[rng.choice(FUNCTION_NAMES)]
    slots = sampler(rng)
    fill = dict(slots)
    if "day" in slots:
        fill["dayp"] = day_phrase(slots["day"])
    request = rng.choice(templates).format(**fill)
    request = request[0].upper() + request[1:]
    return request, build(slots)


def sample_unique(rng, n, forbidden, used=None):
    """n pairs whose request is not in `forbidden` (nor in `used`, when given)."""
    pairs = []
    while len(pairs) < n:
        request, call = sample_pair(rng)
        if request in forbidden or (used is not None and request in used):
            continue
        if used is not None:
            used.add(request)
        pairs.append((request, call))
    return pairs


def maybe_system(rng, messages, prompts=SYSTEM_PROMPTS):
    if rng.random() < SYSTEM_FRACTION:
        return [{"role": "system", "content": rng.choice(prompts)}] + messages
    return messages


SLOT_VALUES = [
    CITIES,
    DAYS,
    CONTACTS,
    TEXTS,
    ARTISTS,
    CURRENCIES,
    TITLES,
    TIMES,
    [str(m) for m in MINUTES],
    [str(a) for a in AMOUNTS],
]


def wrong_call(rng, call):
    """The call with one slot value swapped for another of its kind: a plausible mistake."""
    values = [v for values in SLOT_VALUES for v in values if f'"{v}"' in call or f"={v})" in call or f"={v}," in call]
    value = rng.choice(values)
    kind = next(values for values in SLOT_VALUES if value in values)
    other = rng.choice([v for v in kind if v != value])
    quoted = f'"{value}"' in call
    old, new = (f'"{value}"', f'"{other}"') if quoted else (f"={value}", f"={other}")
    return call.replace(old, new, 1)


def preference_rows(rng, chat_rows):
    """Prompt: the turns before the last assistant turn; chosen: that turn; rejected: it with a wrong slot."""
    rows = []
    for row in chat_rows:
        *prompt, answer = row["messages"]
        rejected = wrong_call(rng, answer["content"])
        assert rejected != answer["content"]
        rows.append({"prompt": prompt, "chosen": [answer], "rejected": [{"role": "assistant", "content": rejected}]})
    return rows


# ------------------------------------------------------------------ tool rows
def tool(name, description, **types):
    """A JSON-schema tool; parameters carry only their type, since every row carries every schema."""
    properties = {param: {"type": kind} for param, kind in types.items()}
    parameters = {"type": "object", "properties": properties, "required": list(types)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


# The same list in the same order on every row, as a product sends it.
TOOLS = [
    tool("get_weather", "Get the weather forecast for a city.", city="string", day="string"),
    tool("set_timer", "Start a countdown timer.", minutes="integer"),
    tool("send_message", "Send a text message to a contact.", contact="string", text="string"),
    tool("play_music", "Play music by an artist.", artist="string"),
    tool(
        "convert_currency",
        "Convert an amount between currency codes.",
        amount="number",
        source="string",
        target="string",
    ),
    tool("add_event", "Add an event to the calendar.", title="string", day="string", time="string"),
]
TOOL_SYSTEM_PROMPTS = [
    "You are an assistant that can call functions.",
    "Use the tools to help the user.",
    "You are a helpful phone assistant.",
]
MULTI_STEP_FRACTION = 0.2
SKIES = ["sunny", "cloudy", "rainy", "windy", "foggy"]
PER_USD = {
    "USD": 1,
    "EUR": 0.92,
    "GBP": 0.79,
    "JPY": 151,
    "CHF": 0.9,
    "CAD": 1.37,
    "AUD": 1.53,
    "INR": 83.4,
    "CNY": 7.24,
    "BRL": 5.05,
}

# Each function's result for a multi-step row, (rng, arguments) -> dict, and the reply that reads it.
RESULTS = {
    "get_weather": (
        lambda rng, a: {"temperature_c": rng.randint(4, 32), "sky": rng.choice(SKIES)},
        "It will be {temperature_c} degrees and {sky} in {city} {dayp}.",
    ),
    "set_timer": (lambda rng, a: {"status": "started"}, "Your {minutes} minute timer has started."),
    "send_message": (lambda rng, a: {"status": "sent"}, "Your message to {contact} was sent."),
    "play_music": (lambda rng, a: {"status": "playing"}, "Now playing {artist}."),
    "convert_currency": (
        lambda rng, a: {"result": round(a["amount"] * PER_USD[a["target"]] / PER_USD[a["source"]], 2)},
        "{amount} {source} is {result} {target}.",
    ),
    "add_event": (lambda rng, a: {"status": "added"}, "I added {title} to your calendar {dayp} at {time}."),
}


def tool_call(call):
    """The string call as a tool call: it is a Python call expression, so its literals are the slot values,
    numbers already numbers."""
    node = ast.parse(call, mode="eval").body
    arguments = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
    return {"type": "function", "id": "call_1", "function": {"name": node.func.id, "arguments": arguments}}


def tool_result(rng, call):
    """The tool's message for `call` and the assistant's short reply about it."""
    name, arguments = call["function"]["name"], call["function"]["arguments"]
    result, reply = RESULTS[name]
    content = result(rng, arguments)
    fill = {**arguments, **content}
    if "day" in arguments:
        fill["dayp"] = day_phrase(arguments["day"])
    return [
        {"role": "tool", "tool_call_id": call["id"], "name": name, "content": json.dumps(content)},
        {"role": "assistant", "content": reply.format(**fill)},
    ]


def tool_rows(rng, pairs, n_multi_step=0):
    """One row per (request, call): the request, the call; n_multi_step rows also get the result and a reply."""
    multi_at = set(rng.sample(range(len(pairs)), n_multi_step))
    rows = []
    for i, (request, call) in enumerate(pairs):
        answer = {"role": "assistant", "content": "", "tool_calls": [tool_call(call)]}
        messages = [{"role": "user", "content": request}, answer]
        if i in multi_at:
            messages += tool_result(rng, answer["tool_calls"][0])
        rows.append({"tools": TOOLS, "messages": maybe_system(rng, messages, TOOL_SYSTEM_PROMPTS)})
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(SEED)

    test_requests = set()
    test_pairs = sample_unique(rng, N_TEST, set(), test_requests)

    n_multi = round(N_TRAIN * MULTI_TURN_FRACTION)
    multi_at = set(rng.sample(range(N_TRAIN), n_multi))
    chat_train, completion_train = [], []
    for i in range(N_TRAIN):
        ((request, call),) = sample_unique(rng, 1, test_requests)
        messages = [
            {"role": "user", "content": request},
            {"role": "assistant", "content": call},
        ]
        if i in multi_at:
            ((request2, call2),) = sample_unique(rng, 1, test_requests)
            messages += [
                {"role": "user", "content": request2},
                {"role": "assistant", "content": call2},
            ]
        chat_train.append({"messages": maybe_system(rng, messages)})
        completion_train.append({"prompt": request, "completion": call})

    chat_test, completion_test = [], []
    for request, call in test_pairs:
        messages = [
            {"role": "user", "content": request},
            {"role": "assistant", "content": call},
        ]
        chat_test.append({"messages": maybe_system(rng, messages)})
        completion_test.append({"prompt": request, "completion": call})

    # Sanity: held-out split.
    train_user = {m["content"] for row in chat_train for m in row["messages"] if m["role"] == "user"}
    assert not train_user & test_requests, "test request leaked into train"

    write_jsonl(OUT_DIR / "chat_train.jsonl", chat_train)
    write_jsonl(OUT_DIR / "chat_test.jsonl", chat_test)
    write_jsonl(OUT_DIR / "completion_train.jsonl", completion_train)
    write_jsonl(OUT_DIR / "completion_test.jsonl", completion_test)
    preference_rng = random.Random(SEED + 1)  # its own stream, so the files above do not change
    write_jsonl(OUT_DIR / "preference_train.jsonl", preference_rows(preference_rng, chat_train[:N_PREFERENCE_TRAIN]))
    write_jsonl(OUT_DIR / "preference_test.jsonl", preference_rows(preference_rng, chat_test))
    tools_rng = random.Random(SEED + 2)  # and its own again
    train_pairs = [(row["prompt"], row["completion"]) for row in completion_train]
    n_multi_step = round(N_TRAIN * MULTI_STEP_FRACTION)
    write_jsonl(OUT_DIR / "tools_train.jsonl", tool_rows(tools_rng, train_pairs, n_multi_step))
    write_jsonl(OUT_DIR / "tools_test.jsonl", tool_rows(tools_rng, test_pairs))
    print(f"wrote {len(chat_train)} train rows ({n_multi} multi-turn) and {len(chat_test)} test rows to {OUT_DIR}")


if __name__ == "__main__":
    main()
