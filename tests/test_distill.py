"""distill.py: the loss is TRL's generalized JSD on the answer tokens alone, the teacher reads exactly the student's
ids, a student equal to its teacher stays as it is, prune:N, resume, LoRA, dry run."""

import json

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM
from trl import DistillationConfig, DistillationTrainer
from trl.experimental.gkd import GKDTrainer

from common.models import BUILTIN, load_tokenizer, pruned
from common.trl_patches import RenderedPrompts, StopOnNonFiniteLoss, compose
from tests.conftest import ROOT, read_jsonl, run_script, teacher_server, weights

SCRIPT = "distill.py"
FAST = ["max_steps=2", "logging_steps=1", "save_steps=2", "progress_bar=false", "batch_size=4", "test_data="]


def tiny(seed: int):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BUILTIN["builtin:tiny"]))


def trainer_for(tmp_path, beta: float, temperature: float = 1.0):
    """distill.py's trainer class on two different random tiny models."""
    tokenizer = load_tokenizer("builtin:tiny")
    args = DistillationConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        beta=beta,
        temperature=temperature,
        report_to=[],
        activation_checkpointing=False,
    )
    Trainer = compose(DistillationTrainer, StopOnNonFiniteLoss, RenderedPrompts)
    return Trainer(
        model=tiny(1),
        teacher_model=tiny(2),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a"]}),
        processing_class=tokenizer,
        add_special_tokens=True,
    )


def fixed_batch(pad_id: int):
    """Three prompts (left-padded) and answers (right-padded) of different lengths."""
    generator = torch.Generator().manual_seed(0)
    prompt_lengths, answer_lengths, width_p, width_c = [5, 3, 7], [4, 6, 1], 7, 6
    prompt_ids = torch.full((3, width_p), pad_id)
    completion_ids = torch.full((3, width_c), pad_id)
    prompt_mask = torch.zeros(3, width_p, dtype=torch.long)
    completion_mask = torch.zeros(3, width_c, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lengths, answer_lengths, strict=True)):
        prompt_ids[i, width_p - p :] = torch.randint(5, 900, (p,), generator=generator)
        prompt_mask[i, width_p - p :] = 1
        completion_ids[i, :c] = torch.randint(5, 900, (c,), generator=generator)
        completion_mask[i, :c] = 1
    return dict(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids, completion_mask=completion_mask
    )


def reference_logits(model, batch):
    """Full-vocabulary logits at the positions that predict each answer token, computed the plain way."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    width_p = batch["prompt_ids"].shape[1]
    return logits[:, width_p - 1 : -1].double()  # the reference divergence in float64


def reverse_kl(student_logits, teacher_logits, temperature):
    """KL(student || teacher) per token, written out: sum over the vocabulary of p_s (log p_s - log p_t)."""
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return (log_s.exp() * (log_s - log_t)).sum(-1)


@pytest.mark.parametrize("beta, temperature", [(1.0, 1.0), (1.0, 0.7), (0.0, 1.0), (0.5, 1.0)])
def test_the_loss_is_generalized_jsd_on_answer_tokens_only(tmp_path, beta, temperature):
    trainer = trainer_for(tmp_path, beta, temperature)
    student, teacher = trainer.model, trainer.teacher_model
    batch = fixed_batch(trainer.processing_class.pad_token_id)
    s_logits, t_logits = reference_logits(student, batch), reference_logits(teacher, batch)
    answer = batch["completion_mask"].bool()
    labels = batch["completion_ids"].masked_fill(~answer, -100)
    per_token = GKDTrainer.generalized_jsd_loss(
        s_logits, t_logits, labels=labels, beta=beta, temperature=temperature, reduction="none"
    ).sum(-1)
    if beta == 1.0:  # TRL's generalized JSD at beta=1 is the reverse KL written out
        assert torch.allclose(per_token, reverse_kl(s_logits, t_logits, temperature)[answer], atol=1e-6)

    with torch.no_grad():
        loss, _, counted = trainer._compute_loss(student, batch, None)
    assert counted.item() == answer.sum().item() == 11
    assert loss.item() == pytest.approx(per_token.mean().item(), abs=1e-6)

    # Token by token (TRL's tool_mask narrows the loss and leaves the attention as it is): an answer token alone
    # carries exactly its own divergence, so prompt and padding carry none
    for row, column in answer.nonzero().tolist():
        alone = torch.zeros_like(batch["completion_mask"])
        alone[row, column] = 1
        with torch.no_grad():
            one, _, _ = trainer._compute_loss(student, {**batch, "tool_mask": alone}, 1)
        index = answer[:row].sum() + answer[row, :column].sum()
        assert one.item() == pytest.approx(per_token[index].item(), abs=1e-6)


def test_a_student_equal_to_its_teacher_has_zero_loss_and_zero_gradient(tmp_path):
    trainer = trainer_for(tmp_path, beta=1.0)
    trainer.teacher_model.load_state_dict(trainer.model.state_dict())
    batch = fixed_batch(trainer.processing_class.pad_token_id)
    loss, _, _ = trainer._compute_loss(trainer.model, batch, None)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())


def test_prune_keeps_evenly_spaced_layers_that_compute_as_before():
    model = tiny(3)
    layers = list(model.model.layers)
    ids = torch.tensor([[5, 6, 7, 8]])
    student = pruned(tiny(3), 2)  # the same weights as model: the first and last of its four layers are kept
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    for kept, original in zip(student.model.layers, (layers[0], layers[3]), strict=True):
        kept_weights, original_weights = kept.state_dict().values(), original.state_dict().values()
        assert all(torch.equal(a, b) for a, b in zip(kept_weights, original_weights, strict=True))
    # generation with a KV cache runs on the renumbered layers, and matches a cache-free forward
    student.config.use_cache = True
    greedy = student.generate(ids, max_new_tokens=4, do_sample=False)
    step = ids
    for _ in range(4):
        next_id = student(step, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        step = torch.cat([step, next_id], dim=1)
    assert torch.equal(greedy, step)


class Recorder(DistillationTrainer):
    """Keeps what each generation batch holds and the ids each model reads in the loss."""

    generated, reads = [], []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        Recorder.generated.append({"prompts": [x["prompt"] for x in inputs], **out})
        return out

    def _get_last_hidden_state(self, unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs):
        who = "teacher" if unwrapped_model is self.accelerator.unwrap_model(self.teacher_model) else "student"
        Recorder.reads.append((who, input_ids.clone(), attention_mask.clone(), logits_to_keep))
        return super()._get_last_hidden_state(unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs)


@pytest.mark.e2e
def test_the_teacher_reads_the_students_answer_after_the_rendered_prompt(tmp_path, sft_model, monkeypatch):
    import distill
    from common.params import apply_overrides

    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    distill.main(apply_overrides(distill.PARAMS, [*FAST, f"teacher={sft_model}", f"output_dir={out}"]), Recorder)
    tokenizer = load_tokenizer(str(out / "final"))
    assert Recorder.generated and len(Recorder.reads) == 2 * 2  # student then teacher, each step
    for (who_s, ids_s, mask_s, keep_s), (who_t, ids_t, mask_t, keep_t) in zip(*[iter(Recorder.reads)] * 2, strict=True):
        assert (who_s, who_t) == ("student", "teacher")
        assert torch.equal(ids_s, ids_t) and torch.equal(mask_s, mask_t) and keep_s == keep_t
    teacher_reads = [read for read in Recorder.reads if read[0] == "teacher"]
    for batch, read in zip(Recorder.generated, teacher_reads, strict=True):
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        assert sorted(ids.tolist()) == sorted(read[1].tolist())  # the same rows, in TRL's shuffled order
        for text, prompt_ids, prompt_mask in zip(
            batch["prompts"], batch["prompt_ids"], batch["prompt_mask"], strict=True
        ):
            # the prompt is the chat template's text with its generation prompt, tokenized as it is
            assert (
                text.endswith("<assistant>")
                and prompt_ids[prompt_mask.bool()].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
            )


@pytest.mark.e2e
def test_identical_student_stays_unchanged(tmp_path, sft_model):
    out = tmp_path / "out"
    result = run_script(SCRIPT, *FAST, f"teacher={sft_model}", f"student_init={sft_model}", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [m["loss"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m]
    assert losses and all(loss == 0.0 for loss in losses)
    before, after = weights(sft_model), weights(out / "final")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.e2e
def test_prune_run_resume_and_lora(tmp_path, sft_model):
    import shutil

    out = tmp_path / "out"
    first = run_script(SCRIPT, *FAST, f"teacher={sft_model}", f"output_dir={out}", "max_steps=1", "save_steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    config = json.loads((out / "student_init" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and "student: " in first.stdout
    assert len(weights(out / "final")) < len(weights(sft_model))  # two layers fewer than the teacher's four
    shutil.rmtree(out / "final")  # as if the run had stopped after its checkpoint
    resumed = run_script(SCRIPT, *FAST, f"teacher={sft_model}", f"output_dir={out}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "student: " not in resumed.stdout  # the resumed run starts from the same student_init/
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m] == [1, 2]
    lora = run_script(SCRIPT, *FAST, f"teacher={sft_model}", f"output_dir={tmp_path / 'lora'}", "lora.enabled=true")
    assert lora.returncode == 0, lora.stderr[-3000:]
    assert "teacher: held-out" not in lora.stdout  # test_data= skips every evaluation


@pytest.mark.e2e
def test_dry_run_previews_the_prompts_and_trains_nothing(tmp_path, sft_model):
    out = tmp_path / "out"
    result = run_script(SCRIPT, *FAST, f"teacher={sft_model}", f"output_dir={out}", "dry_run=true")
    assert result.returncode == 0, result.stderr[-3000:]
    preview = read_jsonl(out / "data_preview.jsonl")
    assert preview and all(row["prompt"].endswith("<assistant>") for row in preview)
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A saved random tiny teacher, tiny(2), served by tests/teacher_server.py with every token's log-prob:
    (URL, the teacher folder, vocabulary size)."""
    folder = tmp_path_factory.mktemp("teacher")
    tiny(2).save_pretrained(folder)
    tokenizer = load_tokenizer("builtin:tiny")
    tokenizer.save_pretrained(folder)
    with teacher_server(folder, "--max-logprobs", str(len(tokenizer))) as url:
        yield url, folder, len(tokenizer)


def server_trainer_for(tmp_path, beta: float, url: str, top_k: int):
    """trainer_for's student with the same teacher, served: the class distill.py composes."""
    from common.teacher_server import TeacherServer
    from common.trl_patches import ServerTeacher

    args = DistillationConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, beta=beta, report_to=[], activation_checkpointing=False
    )
    Trainer = compose(DistillationTrainer, StopOnNonFiniteLoss, RenderedPrompts, ServerTeacher)
    return Trainer(
        model=tiny(1),
        teacher_model=TeacherServer(url, top_k),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a"]}),
        processing_class=load_tokenizer("builtin:tiny"),
        add_special_tokens=True,
    )


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.5])
def test_a_server_teacher_with_every_token_gives_the_local_loss(tmp_path, served, beta):
    url, _, vocabulary = served
    local = trainer_for(tmp_path, beta)
    batch = fixed_batch(local.processing_class.pad_token_id)
    expected, _, counted = local._compute_loss(local.model, batch, None)
    expected.backward()
    whole = server_trainer_for(tmp_path, beta, url, vocabulary)
    loss, entropy, n_valid = whole._compute_loss(whole.model, batch, None)
    loss.backward()
    assert n_valid.item() == counted.item() == 11
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    for (name, a), b in zip(local.model.named_parameters(), whole.model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    # Top 5 of 1,024 tokens: the rest merged into one bucket can only lower a divergence (data processing), and
    # only answer tokens count (one answer token alone carries a share of the whole)
    top5 = server_trainer_for(tmp_path, beta, url, 5)
    coarse, _, _ = top5._compute_loss(top5.model, batch, None)
    assert 0 < coarse.item() < loss.item()
    alone = torch.zeros_like(batch["completion_mask"])
    alone[1, 2] = 1
    one, _, counted_one = top5._compute_loss(top5.model, {**batch, "tool_mask": alone}, None)
    assert counted_one.item() == 1 and one.item() > 0


@pytest.mark.e2e
def test_distill_with_a_server_teacher_runs_as_with_the_local_one(tmp_path, served):
    """The same student and teacher, the teacher once local and once served with every token: the same answers are
    sampled (same seed) and graded alike, step by step."""
    url, teacher, vocabulary = served
    student = tmp_path / "student"
    tiny(1).save_pretrained(student)
    load_tokenizer("builtin:tiny").save_pretrained(student)
    rows = [{"prompt": r["messages"][-2]["content"]} for r in read_jsonl(f"{ROOT}/data/examples/chat_train.jsonl")[:16]]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [*FAST, f"student_init={student}", f"data={data}", "max_steps=2", "save_steps=10"]
    local = run_script(SCRIPT, *common, f"teacher={teacher}", f"output_dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr[-3000:]
    remote = run_script(
        SCRIPT, *common, f"teacher={url}", f"teacher_top_k={vocabulary}", f"output_dir={tmp_path / 'served'}"
    )
    assert remote.returncode == 0, remote.stderr[-3000:]
    logged = [[m for m in read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in m] for run in ("local", "served")]
    assert [m["completions/mean_length"] for m in logged[0]] == [m["completions/mean_length"] for m in logged[1]]
    for a, b in zip(*logged, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    assert (tmp_path / "served" / "final" / "model.safetensors").exists()
