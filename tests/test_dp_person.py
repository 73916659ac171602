"""Person-level DP (#18): persons are Poisson-sampled with all their records, each person's summed
gradient is clipped, the ledger accounts over persons and says so. Real Opacus, a tiny model,
real site files; every bound is checked on neighbouring datasets (with and without a person)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from client.dp_head import clipped_sum, train_head_dp
from client.dp_trainer import train_dp
from client.dp_units import unit_micro_batches, units_of
from client.losses import Loss
from client.site import Site, SiteFacts
from client.trainer import Schedule, encode
from common.adapter import get_state
from common.config import ModelConfig, TrainConfig, resolve
from common.model import build_model
from tests.conftest import make_texts
from tests.test_privacy import _independent_epsilon, journal_entries

CLIP = 0.5


def _norm(parts) -> float:
    return float(torch.sqrt(sum((p.double() ** 2).sum() for p in parts if p is not None)))


def _groups(heavy: int, light: int) -> list[str]:
    """Person "p0" owns `heavy` rows (listed first); `light` persons own one row each."""
    return ["p0"] * heavy + [f"p{i + 1}" for i in range(light)]


def test_sampling_takes_a_persons_records_together():
    groups = ["a"] * 5 + ["b"] * 3 + [f"solo{i}" for i in range(12)] + [""] * 4  # "" = no person
    units = units_of(groups, len(groups))
    assert units.kind == "person" and units.count == 2 + 12 + 4
    rng = np.random.default_rng(0)
    joined = np.zeros(units.count)
    for _ in range(400):
        rows, local = units.sample(rng, 0.3)
        taken = set(rows.tolist())
        assert set(range(5)) <= taken or not set(range(5)) & taken  # a's five rows: all or none
        assert set(range(5, 8)) <= taken or not set(range(5, 8)) & taken
        assert len(set(local.tolist())) == len(set(units.of_row[rows].tolist()))
        joined[np.unique(units.of_row[rows])] += 1
    assert 0.22 < joined.mean() / 400 < 0.38  # the rate is per person, not per record
    lengths = np.random.default_rng(1).integers(3, 40, size=len(groups))
    rows, local = units.rows_of(np.arange(units.count))
    parts = unit_micro_batches(rows, local, lengths)
    assert sorted(np.concatenate([p for p, _ in parts]).tolist()) == list(range(len(groups)))
    for part, _ in parts:  # no person split across micro-batches
        owners = units.of_row[part]
        for other, _ in parts:
            if other is not part:
                assert not set(owners.tolist()) & set(units.of_row[other].tolist())


def test_head_person_gradient_is_clipped_as_one_whatever_its_record_count():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 4)
    x = torch.randn(1, 8).repeat(21, 1) * 3 + torch.randn(21, 8) * 0.01  # p0: 20 near-copies
    x[20] = torch.randn(8)
    y = torch.tensor([2] * 20 + [1])
    persons = units_of(_groups(20, 1), 21)
    with_p0 = clipped_sum(head, x, y, loss=Loss(), clip=CLIP, units=torch.as_tensor(persons.of_row))
    without = clipped_sum(head, x[20:], y[20:], loss=Loss(), clip=CLIP, units=torch.zeros(1, dtype=torch.long))
    p0_alone = clipped_sum(head, x[:20], y[:20], loss=Loss(), clip=CLIP, units=torch.zeros(20, dtype=torch.long))
    diff = [a - b for a, b in zip(with_p0, without)]
    assert _norm(diff) <= CLIP + 1e-5 and _norm(p0_alone) == pytest.approx(CLIP, rel=1e-4)
    # the same rows as 20 record-level units: p0 moves the sum by ~20 C (the test can fail)
    rec = clipped_sum(head, x, y, loss=Loss(), clip=CLIP)
    rec_wo = clipped_sum(head, x[20:], y[20:], loss=Loss(), clip=CLIP)
    assert _norm([a - b for a, b in zip(rec, rec_wo)]) > 10 * CLIP


def test_head_per_unit_norms_equal_autograd():
    """The closed form (g_i h_i^T, Gram sums per person) against autograd, person by person."""
    torch.manual_seed(1)
    head = torch.nn.Linear(6, 5)
    x, y = torch.randn(17, 6), torch.randint(0, 5, (17,))
    units = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 5, 5, 6, 7, 7, 7])
    got_w, got_b = clipped_sum(head, x, y, loss=Loss(), clip=0.3, units=units)
    want_w, want_b = torch.zeros_like(head.weight), torch.zeros_like(head.bias)
    for u in units.unique():
        head.zero_grad()
        rows = units == u
        torch.nn.functional.cross_entropy(head(x[rows]), y[rows], reduction="sum").backward()
        scale = min(1.0, 0.3 / _norm([head.weight.grad, head.bias.grad]))
        want_w += scale * head.weight.grad
        want_b += scale * head.bias.grad
    assert torch.allclose(got_w, want_w, atol=1e-5) and torch.allclose(got_b, want_b, atol=1e-5)


def _adapter_step(tiny_model_dir, texts, labels, groups, *, person: bool) -> tuple[dict, int]:
    """One noiseless DP-SGD step (q = 1, plain SGD at rate 1) over the adapter: returns the
    summed clipped gradient (update x expected batch) and the expected batch."""
    built = build_model(ModelConfig(base=str(tiny_model_dir), lora_r=4), num_labels=3, seed=0)
    for m in built.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    data = encode(built.tokenizer, texts, np.asarray(labels), max_length=24)
    units = units_of(groups, len(texts)) if person else None
    before = get_state(built.model)
    cfg = TrainConfig(learning_rate=1.0, head_learning_rate=1.0, optimizer="sgd", weight_decay=0.0,
                      schedule="constant", warmup_ratio=0.0)
    train_dp(built.model, data, cfg=cfg, schedule=Schedule(0, 1, 0), rng=np.random.default_rng(0),
             steps=1, sample_rate=1.0, noise_multiplier=0.0, max_grad_norm=CLIP, units=units)
    expected = units.count if person else len(texts)
    after = get_state(built.model)
    return {k: (before[k] - after[k]) * expected for k in before}, expected


def test_adapter_person_contribution_bounded_by_clip(tiny_model_dir):
    """Opacus path: removing a person with 12 records changes the clipped sum by at most C."""
    texts, labels = make_texts(12, 3)
    heavy = [texts[0]] * 12  # one customer asking the same thing twelve times
    texts = heavy + texts[1:]
    labels = [0] * 12 + [int(s[-1]) for s in labels[1:]]
    groups = _groups(12, len(texts) - 12)
    full, _ = _adapter_step(tiny_model_dir, texts, labels, groups, person=True)
    rest, _ = _adapter_step(tiny_model_dir, texts[12:], labels[12:], groups[12:], person=True)
    assert _norm([full[k] - rest[k] for k in full]) <= CLIP * (1 + 1e-3)
    full_r, _ = _adapter_step(tiny_model_dir, texts, labels, groups, person=False)
    rest_r, _ = _adapter_step(tiny_model_dir, texts[12:], labels[12:], groups[12:], person=False)
    assert _norm([full_r[k] - rest_r[k] for k in full_r]) > 5 * CLIP  # per record: ~12 C


def _customer_csv(path, *, per_customer: int = 4, customers: int = 40):
    texts, labels = make_texts(per_customer * customers, 4)
    frame = pd.DataFrame({"text": texts, "label": labels,
                          "customer": [f"c{i % customers}" for i in range(len(texts))]})
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("probe", [True, False])
def test_accounting_over_persons_and_unit_in_ledger_and_metrics(tmp_path, tiny_model_dir, probe,
                                                                capsys):
    csv = _customer_csv(tmp_path / "site.csv")
    sets = [f"model.base={tiny_model_dir}", "model.max-length=24", "model.lora-r=4",
            "task.labels=intent_0,intent_1,intent_2,intent_3", "federation.rounds=2",
            "simulation.sites=2", "privacy.dp=true", "privacy.epsilon=2", "data.group-column=customer"]
    if not probe:  # the adapter under Opacus, persons as units
        sets += ["privacy.probe-rounds=0", "privacy.batch-size=8"]
    site = Site(resolve(None, sets), SiteFacts(name="site-0", index=0, data_path=str(csv),
                                               site_dir=str(tmp_path / "s")))
    persons = len(set(site.train_groups))
    assert persons < len(site.splits["train"])  # several queries per customer
    state = get_state(site.model, exclude=site.exclude)
    for rnd in (1, 2):
        state, stats = site.fit(state, server_round=rnd, run="r")
    plan = [e for e in journal_entries(tmp_path / "s") if e["kind"] == "plan"][0]
    q = 8 / persons if not probe else 1.0  # the size rule: every person in every step
    assert plan["unit"] == "person" and plan["sample_rate"] == pytest.approx(q)
    rounds = [e for e in journal_entries(tmp_path / "s") if e["kind"] == "round"]
    assert [e["unit"] for e in rounds] == ["person", "person"]
    assert stats["privacy_unit_person"] == 1.0 and stats["epsilon"] <= 2 + 1e-6
    assert stats["epsilon"] == pytest.approx(_independent_epsilon(tmp_path / "s"), rel=1e-6)
    assert site.ledger().unit() == "person" and "privacy unit: person" in site.ledger().describe()
    assert "unit person" in capsys.readouterr().err


def test_without_a_group_column_the_unit_is_the_record(tmp_path, tiny_model_dir):
    csv = _customer_csv(tmp_path / "site.csv")
    sets = [f"model.base={tiny_model_dir}", "model.max-length=24", "model.lora-r=4",
            "task.labels=intent_0,intent_1,intent_2,intent_3", "federation.rounds=1",
            "simulation.sites=2", "privacy.dp=true", "privacy.epsilon=2"]
    site = Site(resolve(None, sets), SiteFacts(name="site-0", index=0, data_path=str(csv),
                                               site_dir=str(tmp_path / "s")))
    _, stats = site.fit(get_state(site.model, exclude=site.exclude), server_round=1, run="r")
    assert stats["privacy_unit_person"] == 0.0 and site.ledger().unit() == "record"
    plan = [e for e in journal_entries(tmp_path / "s") if e["kind"] == "plan"][0]
    assert plan["unit"] == "record" and plan["sample_rate"] == pytest.approx(1.0)


def test_probe_round_changes_only_the_head_and_noise_is_not_seeded(tmp_path, tiny_model_dir):
    """DP linear probing: the adapter and every base weight stay bit-identical; two sites with
    the same config and seed draw different noise (OS CSPRNG, never train.seed)."""
    csv = _customer_csv(tmp_path / "site.csv")
    sets = [f"model.base={tiny_model_dir}", "model.max-length=24", "model.lora-r=4",
            "task.labels=intent_0,intent_1,intent_2,intent_3", "federation.rounds=1",
            "simulation.sites=2", "privacy.dp=true", "privacy.epsilon=2"]
    news = []
    for tag in ("a", "b"):
        site = Site(resolve(None, sets), SiteFacts(name="site-0", index=0, data_path=str(csv),
                                                   site_dir=str(tmp_path / tag)))
        base = {n: p.detach().clone() for n, p in site.model.named_parameters()}
        before = get_state(site.model, exclude=site.exclude)
        torch.manual_seed(0)
        new, _ = site.fit(before, server_round=1, run="r")
        changed = {k for k in new if not torch.equal(new[k], before[k])}
        assert changed and all("classifier" in k for k in changed)
        for n, p in site.model.named_parameters():
            if "classifier" not in n:
                assert torch.equal(p, base[n]), n
        news.append(new)
    assert any(not torch.equal(news[0][k], news[1][k]) for k in news[0])


def test_train_head_dp_empty_batch_still_adds_noise():
    head = torch.nn.Linear(4, 3)
    w0 = head.weight.detach().clone()
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    for g in opt.param_groups:
        g["base_lr"] = 1.0
    stats = train_head_dp(head, torch.randn(5, 4), torch.randint(0, 3, (5,)), optimizer=opt,
                          schedule=Schedule(0, 1, 0), kind="constant", steps=1, units=units_of(None, 5),
                          sample_rate=1e-9, rng=np.random.default_rng(0), noise_multiplier=1.0, clip=1.0,
                          generator=torch.Generator().manual_seed(0))
    assert stats["num_examples"] == 0 and not torch.equal(head.weight, w0)
