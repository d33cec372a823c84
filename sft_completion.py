"""Completion-model fine-tuning on plain text and on prompt/completion pairs, on TRL's SFTTrainer.

    accelerate launch sft_completion.py                            # built-in tiny model, example task
    accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 8 sft_completion.py  # ZeRO-3, 8 GPUs
    accelerate launch sft_completion.py model=Qwen/Qwen2.5-0.5B data=my_pairs.jsonl template="Q: {prompt}\\nA:"
    accelerate launch sft_completion.py --config configs/recipes/qwen2.5-0.5b-completion-full.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml sft_completion.py   # two CPU processes
    python sft_completion.py dry_run=true                          # preview the data, train nothing

Rows are {"text"} (continued pre-training: loss on every token and the EOS that ends each document) or
{"prompt", "completion"} (loss on the completion and its EOS only; `template` formats the prompt); one
file may mix both. Outputs land in output_dir: params.yaml, data_report.json, metrics.jsonl, loss.png,
checkpoint-N/, and final/ (a plain Hugging Face folder that stops at EOS, with prompt_template.json).
"""

from functools import partial

from trl import SFTTrainer

from common.attention import use_varlen_attention
from common.batching import choose_packing, write_sft_preview
from common.checkpoint import dry_run, export_final, start_run
from common.cleaning import CLEAN_DEFAULTS
from common.completion_format import check_template, completion_example, completion_row_problem
from common.data import DataReport
from common.distributed import is_main, shutdown
from common.errors import UserError, exit_on_user_error
from common.evaluate import TEMPLATE_FILE, held_out
from common.models import apply_lora, load_model, load_tokenizer
from common.params import Rules, resolve, save_params
from common.prepare import Recipe, prepare
from common.tracking import plot_loss
from common.training import callbacks, sft_config
from common.trl_patches import LabelledPositionsHead, StopOnNonFiniteLoss, compose

PARAMS = dict(
    model="builtin:tiny",  # a hub id, a local folder, or builtin:tiny (random init, tokenizer in common/)
    data=["data/examples/completion_train.jsonl"],  # {"text"} and/or {"prompt", "completion"} rows
    template="Request: {prompt}\nCall: ",  # str.format pattern for prompts; "{prompt}" uses them as they are
    eval_data=[],  # held-out rows for eval loss; when empty, eval_fraction of data is held out
    eval_fraction=0.05,
    test_data="data/examples/completion_test.jsonl",  # held-out exact match before and after training ("" to skip)
    test_rows=0,  # evaluate the first N rows of test_data (0: all): keeps evaluation cheap next to training
    output_dir="outputs/sft_completion",
    max_length=512,  # longer prompt/completion rows are truncated; longer text rows are cut into pieces
    packing="auto",  # auto: packed, with per-document attention (fastest on CPU and GPU, BENCHMARKS.md)
    num_epochs=12.0,  # ~460 steps: the example task needs them (10 epochs of the deduplicated rows gave 81%)
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
        merge=True,  # final/ holds the merged model; false: the adapter
    ),
)


RULES = Rules()  # this script's own values and bounds: none beyond the shared ones in common/params.py
# The keys besides data, cleaning, max_length and seed that change the prepared data (a change re-prepares it)
DATA_KEYS = ("template", "packing", "batch_size")


@exit_on_user_error
def main(params: dict, trainer_class=None, row_hook=None) -> None:
    out = params["output_dir"]
    resume_from = start_run(params, PARAMS)

    # Data: read, check, clean, split; prompt and completion are tokenized apart, so the mask is exact; then packed,
    # in Arrow on every core, once: reruns and other ranks memory-map the result (common/prepare.py)
    report = DataReport()
    tokenizer = load_tokenizer(params["model"], params["trust_remote_code"])
    template = check_template(params["template"], tokenizer)
    if tokenizer.pad_token is None:  # harmless here: labels are set before padding, so EOS keeps its loss
        tokenizer.pad_token = tokenizer.eos_token
    packing = choose_packing(params["packing"])
    recipe = Recipe(
        "sft_completion",
        completion_row_problem,
        partial(completion_example, tokenizer, template, params["max_length"]),
        packing=packing,
        hook=row_hook,
        keys=DATA_KEYS,
    )
    data = prepare(params, recipe, tokenizer, report)
    train_set, eval_set = data.train, data.eval
    if not len(train_set):
        raise UserError("no training rows left after checks and truncation (see data_report.json)")
    if is_main():
        save_params(params, out)
        report.write(out)
    if params["dry_run"]:
        return dry_run(out, tokenizer, report, partial(write_sft_preview, train_set, tokenizer, packing))

    # Model: the vocabulary stays as it is, so final/ and a LoRA adapter match the base model
    lora = params["lora"]["enabled"]  # LoRA keeps the frozen base in bf16; trained weights stay fp32
    model = load_model(params["model"], params["dtype"], params["seed"], params["trust_remote_code"], frozen=lora)
    stops = [tokenizer.eos_token_id]
    if not resume_from:
        held_out("before", model, tokenizer, params["test_data"], template, stops, rows=params["test_rows"])
    if lora:
        model = apply_lora(model, params["lora"], [])
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

    saved = {TEMPLATE_FILE: {"template": template}}
    final = export_final(trainer, tokenizer, out, stops, params["lora"]["merge"], saved)
    if is_main():
        plot_loss(out)
        print(f"saved {final}")
        held_out("after", final, tokenizer, params["test_data"], template, show=3, rows=params["test_rows"])
    shutdown()


if __name__ == "__main__":
    main(resolve(PARAMS, RULES))
