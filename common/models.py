"""Models: loading a model and its tokenizer (a hub id, a local folder, or the built-in tiny model), LoRA."""

import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from common.errors import UserError

PAD = "<pad>"
BUILTIN = {"builtin:tiny": os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin_tiny")}


def load_tokenizer(name: str, trust_remote_code: bool = False):

    path = BUILTIN.get(name, name)
    if name.startswith("builtin:") and name not in BUILTIN:
        raise UserError(f"unknown built-in model '{name}' (available: {', '.join(BUILTIN)})")
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1  # a hub id is owner/name
    if looks_local and not os.path.isdir(path):
        raise UserError(f"model folder not found: {name}")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of model '{name}': {str(e).splitlines()[0]}") from None


def resolve_dtype(dtype: str) -> torch.dtype:
    """ "auto" is bf16 on a GPU that has it and fp32 elsewhere (bf16 on CPU is slower and not reproducible)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


def load_model(name: str, dtype: str = "auto", seed: int = 0, trust_remote_code: bool = False, frozen: bool = False):
    """The model for training, with the KV cache off: with the cache on, packed documents see each other.

    Weights that train are kept in fp32 and bf16/fp16 is the autocast compute dtype (the Trainer's bf16
    flag): AdamW steps of lr ~1e-5 applied to bf16 weights mostly round away. Frozen weights (under
    LoRA) are stored in the compute dtype; peft keeps the adapters in fp32.
    """

    torch_dtype = resolve_dtype(dtype) if frozen else torch.float32
    if name in BUILTIN:
        torch.manual_seed(seed)  # random initialisation, reproducible
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BUILTIN[name]), dtype=torch_dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    model.config.use_cache = False
    return model


def add_pad_token(tokenizer, stop_ids: list[int], chat_ids=()) -> None:
    """A pad token that is not a stop token: a collator that masks padding would then mask every EOS too, and
    the model would never learn to stop. An existing special token the chat never uses (not a stop, BOS or UNK,
    not one of chat_ids, absent from the chat template; one named like a pad first) is reused: a new token would
    grow the embedding (a copy of the 49k x 576 matrix on SmolLM2, 218 MB) and, under LoRA, make the whole
    embedding train. Padded positions carry no loss and no attention, so which token fills them changes nothing."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in stop_ids:
        return
    taken = {*stop_ids, *chat_ids, tokenizer.bos_token_id, tokenizer.unk_token_id}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    unused = [
        t.content
        for i, t in sorted(tokenizer.added_tokens_decoder.items())
        if t.special and i not in taken and t.content not in template
    ]
    unused.sort(key=lambda content: "pad" not in content.lower())  # stable: id order within each group
    if unused:
        tokenizer.pad_token = unused[0]
    else:
        tokenizer.add_special_tokens({"pad_token": PAD})


def resize_embeddings(model, tokenizer, new_ids: list[int], pretrained: bool = True) -> None:
    """Cover the tokenizer (growing to a multiple of 64); each new token's rows start at the mean of the old rows,
    or, in a pretrained model, of the rows of the words it is named by (`<fn:play_music>`: "play music",
    `<assistant>`: "assistant"; a name without words: the mean).

    A pretrained model then reads a function token as its name from the first step: with every new row at the
    same mean, SmolLM2-135M never learned which function token to write (0% held-out in tool form, BENCHMARKS.md).
    Random weights hold no words, and their mean row is near zero: the built-in model learns its chat tokens from
    there (99.0% held-out, against 87.5% from word rows). Models often carry spare rows past their vocabulary, so
    new tokens may fit without growing; spare rows hold nothing learned and are never a source.
    """
    if not new_ids:
        return
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)
    learned = min(new_ids)
    sources = [[i for i in _word_ids(tokenizer, t) if i < learned] if pretrained else [] for t in new_ids]
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is not None:
                mean = layer.weight[:learned].mean(dim=0)
                for token_id, rows in zip(new_ids, sources, strict=True):
                    layer.weight[token_id] = layer.weight[rows].mean(dim=0) if rows else mean


def _word_ids(tokenizer, token_id: int) -> list[int]:
    """The ids of the words a token is named by: its text without brackets and a `fn:` kind, `_` as spaces."""
    name = tokenizer.convert_ids_to_tokens(token_id).strip("<|>").split(":")[-1].replace("_", " ").strip()
    return tokenizer(" " + name, add_special_tokens=False)["input_ids"] if name else []


def apply_lora(model, lora: dict, new_token_ids: list[int]):
    """Wrap the model with a LoRA adapter. When tokens were added, the embedding (and an untied output
    layer) train in full and are saved with the adapter, so the new rows learn.

    peft's row-wise trainable tokens would be cheaper, but TRL's fused LM head reads `lm_head.weight`
    directly and fails on (or bypasses) a trainable-tokens wrapper; a modules_to_save copy it reads right.
    """

    names = {module: name for name, module in model.named_modules()}
    full = []
    if new_token_ids:
        embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
        full.append(names[embedding].rsplit(".", 1)[-1])
        if output is not None and output.weight is not embedding.weight:
            full.append(names[output].rsplit(".", 1)[-1])
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules="all-linear" if lora["target_modules"] == ["all-linear"] else lora["target_modules"],
        modules_to_save=full or None,
        ensure_weight_tying=bool(full),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"lora: {str(e).splitlines()[0]}") from None


def pruned(model, keep: int):
    """The model with `keep` of its decoder layers, evenly spaced from the first to the last (DistilBERT keeps every
    other layer; Minitron's depth pruning keeps layers across the depth): a student that starts from the teacher's
    own weights. Each kept layer is renumbered, so its attention reads and writes its own slot of the KV cache."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(f"prune: {type(model).__name__} keeps no `layers` list in its decoder; use a student model")
    total = len(layers)
    if not 1 <= keep < total:
        raise UserError(f"prune:{keep}: the teacher has {total} layers; keep between 1 and {total - 1}")
    kept = [round(i * (total - 1) / (keep - 1)) for i in range(keep)] if keep > 1 else [0]
    decoder.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for new, layer in enumerate(decoder.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = model.config.get_text_config()
    config.num_hidden_layers = keep
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    return model


def check_same_vocabulary(student, teacher, student_name: str, teacher_name: str) -> None:
    """The teacher grades the student's tokens by their ids: both tokenizers must map every token to the same id."""
    if student.get_vocab() != teacher.get_vocab():
        raise UserError(
            f"the student's tokenizer ({student_name}, {len(student)} tokens) and the teacher's ({teacher_name}, "
            f"{len(teacher)} tokens) have different vocabularies; distillation here needs one vocabulary "
            "(a student made with student_init=prune:N always has it)"
        )
