"""On-policy distillation on TRL's DistillationTrainer: the student answers each prompt itself and the teacher grades
every token of that answer.

    accelerate launch sft_chat.py && accelerate launch distill.py     # example task: the teacher pruned to half
    accelerate launch distill.py --config configs/recipes/smollm2-135m-distill.yaml   # a real teacher, a third of it
    accelerate launch distill.py teacher=my_org/teacher student_init=my_org/small data=my_prompts.jsonl
    accelerate launch distill.py teacher=http://127.0.0.1:8000/v1 student_init=my_org/small   # vllm serve's teacher
    accelerate launch distill.py beta=0                                 # forward KL instead of reverse KL
    accelerate launch --config_file configs/accelerate/zero3.yaml --num_processes 8 distill.py   # 8 GPUs
    accelerate launch --config_file configs/accelerate/ddp.yaml distill.py   # two CPU processes
    python distill.py dry_run=true                                      # preview the prompts, train nothing

The student is student_init: prune:N is the teacher with N of its layers kept, evenly spaced from the first to the
last, written to output_dir/student_init/ (same tokenizer and template); or any model folder or hub id whose
tokenizer has the teacher's vocabulary. Each step the student samples one answer per prompt, rendered with the
student's chat template (the row's tools with it) as grpo.py renders prompts; the teacher reads exactly those ids
after the same prompt ids, and the loss is TRL's generalized JSD between the two next-token distributions over the
answer's tokens only (its end-of-turn token included): beta=1 is reverse KL, so the student learns from its own
mistakes. A teacher behind vLLM's OpenAI-compatible server (teacher=URL) sends its top teacher_top_k log-probs per
position instead (common/teacher_server.py; the loss in README "distill"). Held-out exact match of the teacher, and
of the student before and after, is printed. Outputs: params.yaml, data_report.json, metrics.jsonl (loss, entropy,
completion lengths), loss.png, student_init/, checkpoint-N/, final/.
"""

import os
import re
import shutil
from functools import partial

from trl import DistillationTrainer

from common.checkpoint import dry_run, export_final, start_run, stop_ids
from common.cleaning import CLEAN_DEFAULTS
from common.data import DataReport
from common.distributed import is_main, shutdown, wait_for_everyone
from common.errors import UserError, exit_on_user_error
from common.evaluate import held_out
from common.models import apply_lora, check_same_vocabulary, load_model, load_tokenizer, pruned
from common.params import Rules, resolve, save_params
from common.prompts import prepared_prompts, write_prompt_preview
from common.teacher_server import TeacherServer
from common.tracking import plot_loss
from common.training import callbacks, distill_config
from common.trl_patches import RenderedPrompts, ServerTeacher, StopOnNonFiniteLoss, compose

PARAMS = dict(
    teacher="outputs/sft_chat/final",  # the model that grades: a folder, a hub id, or a server URL (README "distill")
    teacher_top_k=20,  # a teacher server's log-probs per position (vLLM's --max-logprobs); the rest is one bucket
    student_init="prune:2",  # prune:N (the teacher with N layers; the built-in has 4), or a model with its vocabulary
    data=["data/examples/chat_train.jsonl"],  # chat rows (the last assistant turn is left out) or {"prompt"} rows
    test_data="data/examples/chat_test.jsonl",  # held-out exact match of teacher, student before and after ("" skips)
    test_rows=0,  # evaluate the first N rows of test_data (0: all): keeps evaluation cheap next to training
    output_dir="outputs/distill",
    beta=1.0,  # generalized JSD: 1 reverse KL (on-policy distillation's choice), 0 forward KL, 0.5 symmetric JSD
    temperature=1.0,  # of sampling and of both distributions in the loss
    top_p=1.0,
    max_completion_length=64,  # tokens the student writes per answer
    max_length=512,  # prompt + answer; longer prompts are left out and counted
    num_epochs=8.0,
    max_steps=-1,  # -1: run num_epochs
    learning_rate=1e-3,  # for the 1M-parameter built-in model; a real model wants ~1e-5 (full) or ~1e-4 (LoRA)
    lr_scheduler="constant",
    warmup=0.0,  # a fraction of all steps, or a step count
    weight_decay=0.0,  # 0: a student that already matches its teacher gets zero gradient and stays as it is
    adam_beta2=0.999,
    max_grad_norm=1.0,
    batch_size=16,  # prompts per device micro-step (one answer each)
    grad_accum=1,  # micro-steps per optimizer step; one generation batch feeds them all
    dtype="auto",  # auto: bf16 on a GPU that has it, fp32 on CPU (the teacher is held in it too)
    activation_checkpointing=False,
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

RULES = Rules(
    bounds={
        "beta": (lambda v: 0 <= v <= 1, "must be in [0, 1] (1: reverse KL, 0: forward KL)"),
        "temperature": (lambda v: v > 0, "must be > 0"),
        "max_completion_length": (lambda v: v >= 1, "must be >= 1"),
        "teacher_top_k": (lambda v: v >= 1, "must be >= 1"),
    },
)
# The keys besides data, cleaning, max_length and seed that change the prepared prompts (a change re-prepares them)
DATA_KEYS = ("teacher", "student_init", "max_completion_length")


def student_folder(params: dict, resume_from: str | None) -> str:
    """The student to start from: prune:N writes the teacher with N layers to output_dir/student_init/ (whole, then
    renamed; a resumed run reuses it), anything else is a model folder or hub id."""
    init = params["student_init"]
    if not init.startswith("prune:"):
        return init
    keep = re.fullmatch(r"prune:(\d+)", init)
    if not keep:
        raise UserError(f"student_init={init!r}: prune:N takes a whole number of layers, like prune:10")
    folder = os.path.join(params["output_dir"], "student_init")
    if is_main() and not (resume_from and os.path.isdir(folder)):
        student = pruned(load_model(params["teacher"], trust_remote_code=params["trust_remote_code"]), int(keep[1]))
        student.config.use_cache = True
        tmp = f"{folder}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        student.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(params["teacher"], params["trust_remote_code"]).save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        print(f"student: {params['teacher']} with {keep[1]} layers, saved in {folder}", flush=True)
    wait_for_everyone()
    return folder


def teacher_and_student(params: dict, resume_from: str | None):
    """(the teacher: a frozen local model or a TeacherServer, the student's folder, its tokenizer), checked to share
    one vocabulary."""
    name, remote = params["teacher"], params["trust_remote_code"]
    if name.startswith(("http://", "https://")):
        if params["student_init"].startswith("prune:"):
            raise UserError("student_init=prune:N needs the teacher's weights: with a teacher server, name a student")
        if params["temperature"] != 1:
            raise UserError(f"temperature={params['temperature']}: a teacher server's log-probs are at temperature 1")
        teacher = TeacherServer(name, params["teacher_top_k"])
        tokenizer = load_tokenizer(params["student_init"], remote)
        teacher.check_vocabulary(tokenizer, params["student_init"])
        return teacher, params["student_init"], tokenizer
    try:
        teacher_tokenizer = load_tokenizer(name, remote)
        teacher = load_model(name, params["dtype"], params["seed"], remote, frozen=True)
    except UserError as e:
        raise UserError(f"teacher: {e}") from None
    student = student_folder(params, resume_from)
    tokenizer = load_tokenizer(student, remote)
    check_same_vocabulary(tokenizer, teacher_tokenizer, student, name)
    return teacher, student, tokenizer


@exit_on_user_error
def main(params: dict, trainer_class=None, row_hook=None) -> None:
    out, remote = params["output_dir"], params["trust_remote_code"]
    resume_from = start_run(params, PARAMS, model_key="teacher")

    # Student and teacher: one vocabulary, or the teacher's grades would name other tokens
    teacher, student, tokenizer = teacher_and_student(params, resume_from)

    # Data: prompts checked, cleaned and rendered once with the student's chat template and each row's tools, as
    # grpo.py renders them (common/prompts.py)
    report = DataReport()
    prompts, template = prepared_prompts(params, "distill", DATA_KEYS, student, tokenizer, report, row_hook)
    if is_main():
        save_params(params, out)
        report.write(out)
    if params["dry_run"]:
        return dry_run(out, tokenizer, report, partial(write_prompt_preview, tokenizer, prompts))

    # Models: the student trains in full or through LoRA; the teacher is frozen in the compute dtype
    lora = params["lora"]["enabled"]
    model = load_model(student, params["dtype"], params["seed"], remote, frozen=lora)
    stops = stop_ids(model, tokenizer)
    if not resume_from:
        if not isinstance(teacher, TeacherServer):  # a served teacher is not evaluated here
            held_out("teacher", teacher, tokenizer, params["test_data"], template, rows=params["test_rows"])
        held_out("before", model, tokenizer, params["test_data"], template, rows=params["test_rows"])
    if lora:
        model = apply_lora(model, params["lora"], [])

    # Trainer: TRL's DistillationTrainer on the rendered prompts (a resumable prompt order), stopped on a
    # non-finite loss, its teacher's numbers from a server when it is one (common/trl_patches.py)
    args = distill_config(params)
    Trainer = compose(trainer_class or DistillationTrainer, StopOnNonFiniteLoss, RenderedPrompts, ServerTeacher)
    trainer = Trainer(
        model=model,
        teacher_model=teacher,
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
        print(f"saved {final}", flush=True)
        held_out("after", final, tokenizer, params["test_data"], template, show=3, rows=params["test_rows"])
    shutdown()


if __name__ == "__main__":
    main(resolve(PARAMS, RULES))
