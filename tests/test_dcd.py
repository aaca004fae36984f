"""Discrete consistency distillation (duo.DCDObjective): the shared noise path, the rounds
(teacher refresh, doubling gap), the loss, and the training core's ``objective="dcd"``."""

from __future__ import annotations

import copy

import pytest
import torch

from dllm_lesson import duo
from dllm_lesson.training import TrainConfig, read_metrics, train

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, global_attn_every_n_layers=2, local_attention=16)


def test_shared_noise_pair_flips_at_s_are_a_subset_of_flips_at_t():
    """One Gaussian draw for both times: x0 survives at t => it survives at s < t (its
    margin over every rival grows with alpha~/sigma~), so x_s is x_t with fewer flips."""
    V, B, L = 300, 64, 20
    g = torch.Generator().manual_seed(0)
    sched = duo.DuoSchedule(V)
    x0 = torch.randint(0, V, (B, L), generator=g)
    t = torch.rand(B, generator=g)
    s = (t - 0.2).clamp_min(0)
    scored = torch.ones(B, L, dtype=torch.bool)
    scored[:, :3] = False                                   # a "prompt": never noised
    xt, xs = duo.shared_noise_pair(x0, t, s, sched, scored, vocab_size=V, generator=g)
    assert torch.equal(xt[:, :3], x0[:, :3]) and torch.equal(xs[:, :3], x0[:, :3])
    flip_t, flip_s = xt != x0, xs != x0
    assert bool((flip_s <= flip_t).all()) and flip_t.sum() > flip_s.sum() > 0
    # same time: the same tokens
    xt2, xs2 = duo.shared_noise_pair(x0, t, t, sched, scored, vocab_size=V, generator=g)
    assert torch.equal(xt2, xs2)


class _Toy(torch.nn.Module):
    """Embedding -> linear: a model with ``input_ids`` -> ``.logits``."""

    def __init__(self, V, seed):
        super().__init__()
        from types import SimpleNamespace

        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(V, 8)
        self.out = torch.nn.Linear(8, V)
        self._ns = SimpleNamespace

    def forward(self, input_ids, attention_mask=None):
        return self._ns(logits=self.out(self.emb(input_ids)))


def test_rounds_refresh_the_teacher_and_double_the_gap():
    V = 20
    student, teacher = _Toy(V, 0), _Toy(V, 1)
    obj = duo.DCDObjective(vocab_size=V, teacher=teacher, update_every=3, base_steps=8)
    assert [obj.dt(k) for k in (0, 2, 3, 6, 9, 12, 30)] == [1 / 8, 1 / 8, 1 / 4, 1 / 2, 1, 1, 1]
    batch = {"input_ids": torch.randint(0, V, (4, 6))}
    given = copy.deepcopy(teacher.state_dict())
    for step in range(3):                                  # round 0: the teacher as given
        loss, m = obj.loss(student, batch, step, torch.Generator().manual_seed(step))
        assert loss.requires_grad and m["dt"] == 1 / 8
        with torch.no_grad():                              # the student moves on
            for p in student.parameters():
                p.add_(0.01)
    assert all(torch.equal(a, b) for a, b in zip(given.values(), teacher.state_dict().values()))
    assert not any(p.requires_grad for p in teacher.parameters())
    obj.loss(student, batch, 3, torch.Generator())        # round 1: teacher = student
    assert all(torch.equal(a, b) for a, b in
               zip(student.state_dict().values(), teacher.state_dict().values()))


def test_kl_is_zero_for_a_student_equal_to_its_teacher_at_zero_gap():
    V = 20
    student = _Toy(V, 0)
    teacher = copy.deepcopy(student)
    obj = duo.DCDObjective(vocab_size=V, teacher=teacher, update_every=100,
                           base_steps=10**9)               # dt ~ 0: x_s = x_t
    batch = {"input_ids": torch.randint(0, V, (4, 6))}
    for kl in duo.DCD_KL:
        obj.kl = kl
        loss, _ = obj.loss(student, batch, 0, torch.Generator().manual_seed(0))
        assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5)
    other = duo.DCDObjective(vocab_size=V, teacher=_Toy(V, 5), update_every=100)
    loss, _ = other.loss(student, batch, 0, torch.Generator().manual_seed(0))
    assert float(loss.detach()) > 1e-3


def test_bad_distillation_settings_fail_clearly():
    with pytest.raises(ValueError, match="needs a teacher"):
        duo.DCDObjective(vocab_size=20, teacher=None)
    with pytest.raises(ValueError, match="teacher"):
        TrainConfig(objective="dcd")
    with pytest.raises(ValueError, match="unknown dcd_kl"):
        TrainConfig(objective="dcd", teacher="tiny-duo", dcd_kl="sideways")
    with pytest.raises(ValueError, match="unknown duo_loss"):
        TrainConfig(objective="duo", duo_loss="l2")
    with pytest.raises(ValueError, match="unknown Duo loss scale"):
        TrainConfig(objective="duo", duo_loss="sym_kl", duo_scale="sometimes")
    with pytest.raises(ValueError, match="ELBO"):
        TrainConfig(objective="duo", duo_loss="elbo", duo_scale="seed")
    assert TrainConfig(objective="duo", duo_loss="sym_kl").duo_scale == "batch_mean"
    assert TrainConfig(objective="duo", duo_loss="sym_kl", duo_scale=True).duo_scale == "seed"


def test_training_core_runs_duo_elbo_then_dcd_from_it(tmp_path):
    torch.set_num_threads(1)
    common = dict(model_config=SMALL, data="chat", seq_len=96, batch_size=4, lr=3e-3,
                  warmup_steps=1, max_steps=3, fill_max=8, log_every=1, save_every=3,
                  progress=False)
    train(TrainConfig(objective="duo", model="scratch", output_dir=str(tmp_path / "duo"),
                      **common))
    res = train(TrainConfig(objective="dcd", model=str(tmp_path / "duo"),
                            teacher=str(tmp_path / "duo"), dcd_update_every=2,
                            output_dir=str(tmp_path / "dcd"), **common))
    losses = [r["loss"] for r in read_metrics(tmp_path / "dcd")]
    assert len(losses) == 3 and all(0 <= v < 50 for v in losses)
    assert res["steps"] == 3 and (tmp_path / "dcd" / "model.safetensors").exists()
