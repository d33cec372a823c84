"""Reinforcement learning on verifiable rewards (GRPO and its variants: DAPO, Dr. GRPO, GSPO) on TRL's GRPOTrainer.

    accelerate launch sft_chat.py --config configs/recipes/grpo-warmup.yaml && accelerate launch grpo.py  # example task
    accelerate launch grpo.py model=outputs/my_sft/final data=my_prompts.jsonl rewards=[my_rewards.py:correct]
    accelerate launch grpo.py loss_type=grpo scale_rewards=none            # Dr. GRPO
    accelerate launch grpo.py importance_sampling_level=sequence           # GSPO
    accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 8 grpo.py use_vllm=true  # 8 GPUs
    accelerate launch --config_file configs/accelerate/ddp.yaml grpo.py   # two CPU processes
    python grpo.py dry_run=true                                            # preview the prompts, train nothing

Each step samples num_generations completions per prompt, scores each with the rewards, and moves the policy toward
the completions that beat their group's mean. A reward is a Python function `fn(row, completion) -> float or bool`:
`row` is the prompt's source row (a chat row's last assistant turn is its reference; a {"prompt", ...} row keeps any
field), `completion` the generated answer alone, as text (for a row with tools, the parsed assistant message).
Held-out exact match is printed before and after. Outputs: params.yaml, data_report.json, metrics.jsonl (reward,
reward_std, frac_reward_zero_std, completion lengths, clip ratios, kl when beta > 0), loss.png, checkpoint-N/, final/.
"""

import os
from functools import partial

import torch
from trl import GRPOTrainer

from common.checkpoint import dry_run, export_final, start_run, stop_ids
from common.cleaning import CLEAN_DEFAULTS
from common.data import DataReport
from common.distributed import is_main, shutdown
from common.errors import UserError, exit_on_user_error
from common.evaluate import held_out
from common.models import apply_lora, load_model, load_tokenizer
from common.params import Rules, resolve, save_params
from common.prompts import prepared_prompts, write_prompt_preview
from common.rewards import Reward, load_rewards
from common.tracking import plot_loss
from common.training import callbacks, grpo_config
from common.trl_patches import LabelledPositionsHead, RenderedPrompts, StopOnNonFiniteLoss, compose

PARAMS = dict(
    model="outputs/sft_chat_warmup/final",  # the warm-up run's output (configs/recipes/grpo-warmup.yaml), or any model
    data=["data/examples/chat_train.jsonl"],  # chat rows (last assistant turn = reference) or {"prompt", ...} rows
    test_data="data/examples/chat_test.jsonl",  # held-out exact match before and after ("" to skip)
    test_rows=0,  # evaluate the first N rows of test_data (0: all): keeps evaluation cheap next to training
    output_dir="outputs/grpo",
    rewards=["data/examples/verify.py:verify"],  # module:function or path/file.py:function, each fn(row, completion)
    reward_weights=[],  # one weight per reward; empty: all 1.0
    num_generations=8,  # completions per prompt: a group, whose mean reward is the baseline
    max_completion_length=64,  # tokens generated per completion
    max_length=512,  # prompt + completion; longer prompts are left out and counted
    temperature=1.0,
    top_p=1.0,
    beta=0.0,  # KL penalty to the reference; 0: no reference (DAPO, Dr. GRPO); under LoRA the reference is the base
    loss_type="dapo",  # TRL's: dapo, grpo, dr_grpo, bnpo, cispo, sapo, luspo, vespo
    importance_sampling_level="token",  # or "sequence" (GSPO)
    epsilon=0.2,  # clip range below 1
    epsilon_high=0.28,  # clip range above 1 (DAPO's clip-higher; 0: epsilon)
    num_iterations=1,  # policy updates per generated batch (above 1, the clip ranges matter)
    scale_rewards="group",  # divide advantages by the group's reward std; "batch", or "none" (Dr. GRPO)
    top_entropy_quantile=1.0,  # train on this share of each batch's highest-entropy tokens (the forks); 1.0: all tokens
    mask_truncated_completions=False,  # completions cut at max_completion_length take no part in the loss
    num_epochs=4.0,  # 660 steps of 8 prompts on the example task: 421 s of training on two CPU cores (BENCHMARKS.md)
    max_steps=-1,  # -1: run num_epochs
    learning_rate=3e-4,  # for the 1M-parameter built-in model; real models want ~1e-6 (full) or ~1e-5 (LoRA)
    lr_scheduler="constant",
    warmup=0.0,  # a fraction of all steps, or a step count (the constant schedule has none: constant_with_warmup)
    weight_decay=0.0,
    adam_beta2=0.99,
    max_grad_norm=1.0,
    batch_size=64,  # completions per device micro-step (TRL's per_device_train_batch_size): 8 prompts of 8
    grad_accum=1,  # micro-steps per optimizer step; one generation batch feeds them all
    dtype="auto",  # auto: bf16 on a GPU that has it, fp32 on CPU
    activation_checkpointing=False,
    use_vllm=False,  # GPU only: generate with vLLM (pip install vllm)
    vllm_mode="colocate",  # or "server": a `trl vllm-serve` process at vllm_server_base_url
    vllm_server_base_url="",
    vllm_gpu_memory_utilization=0.3,  # colocate: the share of GPU memory vLLM takes
    seed=42,
    logging_steps=5,
    save_steps=50,
    save_total_limit=2,
    resume=False,  # continue from the newest complete checkpoint in output_dir
    overwrite=False,  # replace a finished run in output_dir
    dry_run=False,  # write data_preview.jsonl (the prompts as rendered), print one, train nothing
    report_to="auto",  # auto: wandb when WANDB_PROJECT is set
    progress_bar=True,
    on_bad_rows="error",  # or "skip": drop and count them in data_report.json
    num_proc=0,  # processes that prepare the data (0: every core available to this process)
    data_cache_dir="outputs/data_cache",  # prepared prompts keyed by data, tokenizer and settings
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
    choices={
        "loss_type": ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
        "scale_rewards": ("group", "batch", "none"),
        "importance_sampling_level": ("token", "sequence"),
        "vllm_mode": ("colocate", "server"),
    },
    bounds={
        "beta": (lambda v: v >= 0, "must be >= 0 (0: no reference model)"),
        "temperature": (lambda v: v > 0, "must be > 0"),
        "num_generations": (lambda v: v >= 2, "must be >= 2"),
        "max_completion_length": (lambda v: v >= 1, "must be >= 1"),
        "epsilon": (lambda v: v > 0, "must be > 0"),
        "epsilon_high": (lambda v: v >= 0, "must be >= 0 (0: epsilon)"),
        "num_iterations": (lambda v: v >= 1, "must be >= 1"),
        "vllm_gpu_memory_utilization": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "top_entropy_quantile": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    },
)
# The keys besides data, cleaning, max_length and seed that change the prepared prompts (a change re-prepares them):
# the model folder's prompt_template.json formats prompts of a model without a chat template
DATA_KEYS = ("model", "max_completion_length")


@exit_on_user_error
def main(params: dict, trainer_class=None, row_hook=None) -> None:
    out = params["output_dir"]
    if params["use_vllm"] and not torch.cuda.is_available():
        raise UserError("use_vllm=true needs a GPU; on CPU the policy generates with transformers (use_vllm=false)")
    functions = load_rewards(params["rewards"], params["reward_weights"])
    resume_from = start_run(params, PARAMS)

    # Data: prompts checked, cleaned and rendered once with the model's chat template and each row's tools, in Arrow
    # on every core (common/prepare.py); each keeps its source row for the rewards
    report = DataReport()
    tokenizer = load_tokenizer(params["model"], params["trust_remote_code"])
    prompts, template = prepared_prompts(params, "grpo", DATA_KEYS, params["model"], tokenizer, report, row_hook)
    if is_main():
        save_params(params, out)
        report.write(out)
    if params["dry_run"]:
        return dry_run(out, tokenizer, report, partial(write_prompt_preview, tokenizer, prompts))
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = params["batch_size"] * processes * params["grad_accum"] // params["num_generations"]
    if len(prompts) < per_step:  # TRL's sampler would make no step and the run would end untrained
        raise UserError(
            f"{len(prompts)} prompts, fewer than the {per_step} that one step takes "
            "(batch_size x processes x grad_accum / num_generations); add rows or lower batch_size"
        )

    # Model: full fine-tuning (a reference copy only when beta > 0), or LoRA whose disabled adapter is the reference
    lora = params["lora"]["enabled"]
    model = load_model(params["model"], params["dtype"], params["seed"], params["trust_remote_code"], frozen=lora)
    stops = stop_ids(model, tokenizer)
    if not resume_from:
        held_out("before", model, tokenizer, params["test_data"], template, rows=params["test_rows"])
    if lora:
        model = apply_lora(model, params["lora"], [])

    # Trainer: TRL's GRPOTrainer on the rendered prompts (each row's own tools, a resumable prompt order), scored by
    # the rewards, stopped on a non-finite loss (common/trl_patches.py)
    rewards = [Reward(spec, fn, tokenizer) for spec, fn in zip(params["rewards"], functions, strict=True)]
    args = grpo_config(params)
    Trainer = compose(trainer_class or GRPOTrainer, StopOnNonFiniteLoss, LabelledPositionsHead, RenderedPrompts)
    trainer = Trainer(
        model=model,
        reward_funcs=rewards,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        callbacks=callbacks(params, args),
        add_special_tokens=not tokenizer.chat_template,
    )
    trainer.train(resume_from_checkpoint=resume_from)

    final = export_final(trainer, tokenizer, out, stops, params["lora"]["merge"])
    if is_main():
        plot_loss(out)
        print(f"saved {final}")
        held_out("after", final, tokenizer, params["test_data"], template, show=3, rows=params["test_rows"])
    shutdown()


if __name__ == "__main__":
    main(resolve(PARAMS, RULES))
