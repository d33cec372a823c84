"""Preference optimisation (DPO and TRL's other pairwise losses) on TRL's DPOTrainer, from an SFT model.

    accelerate launch sft_chat.py && accelerate launch dpo.py      # the example task: SFT, then DPO
    accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 8 dpo.py   # ZeRO-3 on 8 GPUs
    accelerate launch dpo.py model=outputs/my_sft/final data=my_pairs.jsonl test_data= exact_match_data=
    accelerate launch dpo.py --config configs/recipes/qwen2.5-0.5b-dpo-lora.yaml
    python dpo.py dry_run=true                                     # preview the data, train nothing

Rows are {"prompt", "chosen", "rejected"}, strings or message lists, rendered with the model's own chat
template (an sft_chat.py output keeps its special tokens, so <eot> closes chosen and rejected). A row may carry
`tools`: chosen and rejected are then assistant messages with tool_calls, and the scored tokens are the calls. Under
LoRA the reference is the adapter-disabled model; for full fine-tuning, reference log-probs are computed
once and cached in ref_cache_dir, so reruns and resumed runs skip them. Held-out preference accuracy and
exact match are printed before and after. Outputs: params.yaml, data_report.json, metrics.jsonl (loss,
rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins), loss.png, checkpoint-N/, final/.
"""

from functools import partial

from trl import DPOTrainer

from common.chat.native import use_training_template
from common.chat.template import chat_spec
from common.checkpoint import dry_run, export_final, start_run, stop_ids
from common.cleaning import CLEAN_DEFAULTS
from common.data import DataReport
from common.distributed import is_main, shutdown
from common.errors import UserError, exit_on_user_error
from common.evaluate import held_out
from common.models import apply_lora, load_model, load_tokenizer
from common.params import Rules, resolve, save_params
from common.preference import plain_row_problem, preference_example, write_preference_preview
from common.prepare import Recipe, prepare
from common.tracking import plot_loss
from common.training import callbacks, dpo_config
from common.trl_patches import (
    CachedReference,
    LabelledPositionsHead,
    PretokenizedPairs,
    StopOnNonFiniteLoss,
    compose,
)

PARAMS = dict(
    model="outputs/sft_chat/final",  # the default sft_chat.py run's output; or any hub id or local folder
    data=["data/examples/preference_train.jsonl"],  # {"prompt", "chosen", "rejected", "tools"?} rows
    chat_template="",  # a Jinja file to render the pairs with instead of the model's (README "Native chat templates")
    reasoning="keep",  # or "drop": remove reasoning_content / leading <think> blocks from chosen and rejected
    eval_data=[],  # held-out rows for eval loss and rewards; when empty, eval_fraction of data is held out
    eval_fraction=0.05,
    test_data="data/examples/preference_test.jsonl",  # preference accuracy before and after ("" to skip)
    exact_match_data="data/examples/chat_test.jsonl",  # exact match before and after ("" to skip)
    test_rows=0,  # evaluate the first N rows of each file above (0: all): keeps evaluation cheap next to training
    output_dir="outputs/dpo",
    loss_type=["sigmoid"],  # any of TRL's: sigmoid, ipo, hinge, robust, sppo_hard, apo_zero, sft, ...
    loss_weights=[],  # one weight per loss_type when combining several; empty: all 1.0
    beta=0.1,
    label_smoothing=0.0,  # robust DPO's flip probability (in [0, 0.5)), or EXO's epsilon
    ref_cache_dir="outputs/ref_logps_cache",  # reference log-probs, keyed by reference weights, data and tokenizer
    max_length=512,
    num_epochs=2.0,
    max_steps=-1,  # -1: run num_epochs
    learning_rate=5e-5,  # for the 1M-parameter built-in model; real models want ~5e-7 (full) or ~5e-6 (LoRA)
    lr_scheduler="cosine",
    warmup=0.1,  # a fraction of all steps, or a step count
    weight_decay=0.0,
    adam_beta2=0.999,
    max_grad_norm=1.0,
    batch_size=2,  # pairs per device micro-step
    grad_accum=8,  # micro-steps per optimizer step: 16 pairs a step; small micro-steps pad less (BENCHMARKS.md)
    dtype="auto",  # auto: bf16 on a GPU that has it, fp32 on CPU
    activation_checkpointing=False,
    seed=42,
    logging_steps=5,
    eval_steps=20,
    save_steps=50,
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
        dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        merge=True,  # final/ holds the merged model; false: the adapter
    ),
)


# Values and bounds of this script's own keys (the shared ones are in common/params.py)
RULES = Rules(
    # TRL 1.16's DPO losses (it checks them only inside the first training step)
    choices={
        "loss_type": ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                      "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"),
    },
    bounds={"beta": (lambda v: v > 0, "must be > 0")},
)  # fmt: skip
# The keys besides data, cleaning, max_length and seed that change the prepared data (a change re-prepares it)
DATA_KEYS = ("chat_template", "reasoning")


@exit_on_user_error
def main(params: dict, trainer_class=None, row_hook=None) -> None:
    out = params["output_dir"]
    resume_from = start_run(params, PARAMS)

    # Data: read and check the pairs, then render each whole with the model's chat template (the training variant
    # sft_chat.py would use), so the scored tokens are exactly each answer and its end-of-turn token; in Arrow on
    # every core, once (common/prepare.py)
    report = DataReport()
    tokenizer = load_tokenizer(params["model"], params["trust_remote_code"])
    chat = None
    if tokenizer.chat_template or params["chat_template"]:
        template = use_training_template(tokenizer, params["chat_template"], params["reasoning"])
        chat = chat_spec(tokenizer, template, params["reasoning"])
        report.counts["chat_template"] = chat.source
    recipe = Recipe(
        "dpo",
        partial(plain_row_problem, chat is not None),
        partial(preference_example, tokenizer, chat, params["max_length"]),
        hook=row_hook,
        columns=("prompt_ids", "chosen_ids", "rejected_ids"),
        keys=DATA_KEYS,
    )
    data = prepare(params, recipe, tokenizer, report)
    train, evals = data.train, data.eval
    if not len(train):
        raise UserError("no training pairs left after checks (see data_report.json)")
    report.counts.update(train_pairs=len(train), eval_pairs=len(evals) if evals else 0)
    if is_main():
        save_params(params, out)
        report.write(out)
    if params["dry_run"]:
        preview = partial(write_preference_preview, tokenizer, train, params["max_length"])
        return dry_run(out, tokenizer, report, preview)

    # Model: full fine-tuning, or LoRA whose disabled adapter is the reference
    lora = params["lora"]["enabled"]
    model = load_model(params["model"], params["dtype"], params["seed"], params["trust_remote_code"], frozen=lora)
    stops = stop_ids(model, tokenizer)
    preferences = (params["test_data"], chat)
    before = {}
    if not resume_from:
        before = held_out("before", model, tokenizer, params["exact_match_data"], preferences=preferences,
                          rows=params["test_rows"])  # fmt: skip
    if lora:
        model = apply_lora(model, params["lora"], [])

    # Trainer: TRL's DPOTrainer on the pairs as prepared, stopped on a non-finite loss; full fine-tuning reads the
    # reference log-probs from ref_cache_dir, or computes them once and stores them there (common/trl_patches.py)
    args = dpo_config(params, evals)
    Trainer = compose(
        trainer_class or DPOTrainer, StopOnNonFiniteLoss, LabelledPositionsHead, PretokenizedPairs, CachedReference
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        callbacks=callbacks(params, args),
        ref_cache_dir=params["ref_cache_dir"],
    )
    trainer.train(resume_from_checkpoint=resume_from)

    final = export_final(trainer, tokenizer, out, stops, params["lora"]["merge"])
    if is_main():
        plot_loss(out)
        print(f"saved {final}")
        held_out("after", final, tokenizer, params["exact_match_data"], show=3, preferences=preferences,
                 before=before, rows=params["test_rows"])  # fmt: skip
    shutdown()


if __name__ == "__main__":
    main(resolve(PARAMS, RULES))
