"""Chat fine-tuning with dedicated <system> <user> <assistant> tokens, on TRL's SFTTrainer.

    accelerate launch sft_chat.py                                  # built-in tiny model, example task
    accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 8 sft_chat.py   # ZeRO-3 on 8 GPUs
    accelerate launch sft_chat.py model=Qwen/Qwen2.5-0.5B lora.enabled=true
    accelerate launch sft_chat.py model=Qwen/Qwen3-0.6B chat_format=native      # the model's own chat template
    accelerate launch sft_chat.py --config configs/recipes/x.yaml learning_rate=1e-5
    accelerate launch --config_file configs/accelerate/ddp.yaml sft_chat.py   # two CPU processes
    python sft_chat.py dry_run=true                                # preview the data, train nothing

Loss is taken on assistant content (with its reasoning) and its end-of-turn token only; with
chat_format=native the model's template decides how they render (README "Native chat templates").
Outputs land in output_dir: params.yaml, data_report.json, metrics.jsonl, loss.png, checkpoint-N/, and
final/ (a plain Hugging Face folder whose generation_config stops at the end-of-turn token).
"""

from functools import partial

from trl import SFTTrainer

from common.attention import use_varlen_attention
from common.batching import choose_packing, write_sft_preview
from common.chat.masks import chat_example
from common.chat.own_format import FUNCTION_TOKENS_FILE, use_function_tokens
from common.chat.rows import chat_row_problem
from common.chat.tokenizer import end_of_turn_ids, prepare_tokenizer
from common.checkpoint import dry_run, export_final, start_run
from common.cleaning import CLEAN_DEFAULTS
from common.data import DataReport
from common.distributed import is_main, shutdown
from common.errors import UserError, exit_on_user_error
from common.evaluate import held_out
from common.models import BUILTIN, apply_lora, load_model, load_tokenizer, resize_embeddings
from common.params import Rules, resolve, save_params
from common.prepare import Recipe, prepare
from common.tracking import plot_loss
from common.training import callbacks, sft_config
from common.trl_patches import LabelledPositionsHead, StopOnNonFiniteLoss, compose

PARAMS = dict(
    model="builtin:tiny",  # a hub id, a local folder, or builtin:tiny (random init, tokenizer in common/)
    chat_format="special_tokens",  # or "native": the model's own chat template (README "Native chat templates")
    chat_template="",  # native: a Jinja file to use instead of the model's (e.g. with {% generation %} markers)
    reasoning="keep",  # or "drop": remove reasoning_content / leading <think> blocks from every assistant turn
    function_tokens="auto",  # a token per function in the tools (auto: at most 64 functions; README "Function calling")
    data=["data/examples/chat_train.jsonl"],  # {"messages": [{"role", "content"}]} rows; ShareGPT is mapped
    eval_data=[],  # held-out rows for eval loss; when empty, eval_fraction of data is held out
    eval_fraction=0.05,
    test_data="data/examples/chat_test.jsonl",  # held-out exact match before and after training ("" to skip)
    test_rows=0,  # evaluate the first N rows of test_data (0: all): keeps evaluation cheap next to training
    output_dir="outputs/sft_chat",
    max_length=512,
    packing="auto",  # auto: packed, with per-document attention (fastest on CPU and GPU, BENCHMARKS.md)
    loss_on="all_assistant",  # or "last_assistant"
    num_epochs=12.0,  # ~470 steps: the example task needs them (10 epochs of the deduplicated rows gave 93-96%)
    max_steps=-1,  # -1: run num_epochs
    learning_rate=6e-3,  # for the 1M-parameter built-in model; real models want ~1e-5 (full) or ~2e-4 (LoRA)
    lr_scheduler="cosine",
    warmup=0.05,  # a fraction of all steps, or a step count
    weight_decay=0.0,
    adam_beta2=0.95,
    max_grad_norm=1.0,
    batch_size=8,  # examples per device micro-step; when packed, rows holding about this many examples
    grad_accum=4,  # micro-steps per optimizer step: 32 examples a step, a quarter of the activations (BENCHMARKS.md)
    dtype="auto",  # auto: bf16 on a GPU that has it, fp32 on CPU
    activation_checkpointing=False,
    seed=42,
    logging_steps=10,
    eval_steps=100,
    save_steps=200,
    save_total_limit=2,
    resume=False,  # continue from the newest complete checkpoint in output_dir
    overwrite=False,  # replace a finished run in output_dir
    dry_run=False,  # write data_preview.jsonl and tokenizer/, print an example, train nothing
    report_to="auto",  # auto: wandb when WANDB_PROJECT is set
    progress_bar=True,
    on_bad_rows="error",  # or "skip": drop and count them in data_report.json
    num_proc=0,  # processes that prepare the data (0: every core available to this process)
    data_cache_dir="outputs/data_cache",  # prepared (tokenized, packed) data keyed by data, tokenizer and settings
    clean=dict(CLEAN_DEFAULTS),  # normalise, scrub PII, filter, dedup, decontaminate (README "Cleaning")
    trust_remote_code=False,
    lora=dict(
        enabled=False,
        r=16,
        alpha=32,
        dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        merge=True,  # final/ holds the merged model; false: the adapter (with the new token rows)
    ),
)


# Values and bounds of this script's own keys (the shared ones are in common/params.py)
RULES = Rules(
    choices={
        "chat_format": ("special_tokens", "native"),
        "loss_on": ("all_assistant", "last_assistant"),
        "function_tokens": ("auto", True, False),
    }
)
# The keys besides data, cleaning, max_length and seed that change the prepared data (a change re-prepares it)
DATA_KEYS = ("chat_format", "chat_template", "reasoning", "function_tokens", "loss_on", "packing", "batch_size")


@exit_on_user_error
def main(params: dict, trainer_class=None, row_hook=None) -> None:
    out = params["output_dir"]
    resume_from = start_run(params, PARAMS)

    # Data: read, check, clean, split, tokenize with the chat template (loss masks come from its generation markers,
    # or from prefix rendering verified on every row; common/chat/native.py says which) and pack, in Arrow on
    # every core, once: reruns and other ranks memory-map the result (common/prepare.py)
    report = DataReport()
    tokenizer = load_tokenizer(params["model"], params["trust_remote_code"])
    chat = prepare_tokenizer(tokenizer, params["chat_format"], params["chat_template"], params["reasoning"])
    report.counts["chat_template"] = chat.source
    if is_main():
        print(f"chat template: {chat.source}", flush=True)
    packing = choose_packing(params["packing"])
    recipe = Recipe(
        "sft_chat",
        chat_row_problem,
        partial(chat_example, tokenizer, chat, params["loss_on"]),
        partial(use_function_tokens, tokenizer, chat, params),
        packing,
        row_hook,
        keys=DATA_KEYS,
    )
    data = prepare(params, recipe, tokenizer, report)
    train_set, eval_set, functions = data.train, data.eval, data.extra
    if not len(train_set):
        raise UserError("no training rows left after checks and truncation (see data_report.json)")
    if is_main():
        save_params(params, out)
        report.write(out)
    if params["dry_run"]:
        return dry_run(out, tokenizer, report, partial(write_sft_preview, train_set, tokenizer, packing))

    # Model: new chat tokens get embedding rows from their names' words (the mean when random); LoRA trains them too
    lora = params["lora"]["enabled"]  # LoRA keeps the frozen base in bf16; trained weights stay fp32
    model = load_model(params["model"], params["dtype"], params["seed"], params["trust_remote_code"], frozen=lora)
    resize_embeddings(model, tokenizer, chat.new_token_ids, pretrained=params["model"] not in BUILTIN)
    stops = end_of_turn_ids(tokenizer, params["chat_format"], chat)
    if not resume_from:
        held_out("before", model, tokenizer, params["test_data"], stops=stops, rows=params["test_rows"])
    if lora:
        model = apply_lora(model, params["lora"], chat.new_token_ids)
    if packing:
        use_varlen_attention(model)  # each packed document attends to itself alone (common/attention.py)

    # Trainer: TRL's SFTTrainer on the prepared examples, stopped on a non-finite loss (common/trl_patches.py)
    args = sft_config(params, train_set, eval_set, packing)
    Trainer = compose(trainer_class or SFTTrainer, StopOnNonFiniteLoss, LabelledPositionsHead)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=callbacks(params, args),
    )
    trainer.train(resume_from_checkpoint=resume_from)

    extra = {FUNCTION_TOKENS_FILE: functions} if functions else None
    final = export_final(trainer, tokenizer, out, stops, params["lora"]["merge"], extra)
    if is_main():
        plot_loss(out)
        print(f"saved {final}")
        held_out("after", final, tokenizer, params["test_data"], show=3, rows=params["test_rows"])
    shutdown()


if __name__ == "__main__":
    main(resolve(PARAMS, RULES))
