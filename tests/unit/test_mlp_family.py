"""The MLP model family and PAIR's tasks (``pair.md`` §1): config keys and their errors, the
symmetric split, the sparse-parity generator, the model's state-dict contract and init, and the
``construct star`` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from groklab.cli import main
from groklab.config import Config, ConfigError, MLPConfig, apply_overrides
from groklab.models.mlp import MLPModel, circle_embedding, mlp_logits, mlp_shapes
from groklab.models.transformer import build_model
from groklab.presets import get_preset
from groklab.tasks import SparseParityConfig, build_task, generator, make_data


def _mlp(**kw) -> Config:
    return apply_overrides(Config(), {"model.family": "mlp", **kw})


def test_family_switch_and_keys():
    cfg = _mlp(**{"model.d_hidden": "7", "task.p": "13"})
    assert isinstance(cfg.model, MLPConfig) and cfg.model.d_hidden == 7
    with pytest.raises(ConfigError, match="model.d_hidden"):  # a transformer has no d_hidden
        apply_overrides(Config(), {"model.d_hidden": "7"})
    with pytest.raises(ConfigError, match="model.d_mlp.*of model family 'mlp'|of model family 'mlp'"):
        apply_overrides(cfg, {"model.d_mlp": "7"})
    with pytest.raises(ConfigError, match="not one of transformer, mlp"):
        apply_overrides(Config(), {"model.family": "cnn"})
    back = Config.from_dict(json.loads(cfg.to_json()))
    assert back.model == cfg.model and back.task == cfg.task


@pytest.mark.parametrize("overrides, match", [
    ({"task.name": "sparse_parity"}, "collapsed_in true --model.collapsed_out true"),
    ({"model.embed": "circle"}, "d_embed 2"),
    ({"task.name": "digit_addition"}, "modular or sparse_parity"),
    ({"model.d_hidden": "0"}, "model.d_hidden"),
])
def test_mlp_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _mlp(**overrides).resolved()


def test_cli_unknown_mlp_key_exits_2(tmp_path, capsys):
    assert main(["train", "--preset", "pair2023", "--model.d_mlp", "3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "model.d_hidden" in err and "model.d_mlp" in err


def test_symmetric_split_counts_and_numpy_rule():
    t = get_preset("pair2023").task
    d = make_data(t)
    assert (len(d.train_idx), len(d.test_idx)) == (911, 1367)  # pair.md §1.1: 2278 pairs, int(.4 * 2278)
    rows = torch.cat([d.train_idx, d.test_idx])
    a, b = rows // 67, rows % 67
    assert bool((a <= b).all()) and len(set(rows.tolist())) == 67 * 68 // 2
    sym = [i for i in range(67 * 67) if i // 67 <= i % 67]  # lexicographic a <= b rows
    perm = np.random.RandomState(165).permutation(len(sym))
    assert d.train_idx.tolist() == [sym[i] for i in perm[:911]]


def test_sparse_parity_labels_and_determinism():
    cfg = SparseParityConfig(n_bits=10, k=3, n_train=50, n_test=20, data_seed=4)
    task = build_task(cfg)
    b = task.sample(200, generator(4, 1))
    assert b.tokens.shape == (200, 10) and set(b.tokens.unique().tolist()) <= {0, 1}
    naive = [sum(int(x) for x in row[:3]) % 2 for row in b.tokens]  # parity of the first k bits
    assert b.labels[:, 0].tolist() == naive and b.positions.eq(9).all()
    b2 = task.sample(200, generator(4, 1))
    assert torch.equal(b.tokens, b2.tokens)
    assert 60 < int(b.labels.sum()) < 140  # balanced classes (binomial, 200 draws: 100 +- 3 sigma)


def test_state_dict_contract_and_init():
    cfg = get_preset("pair2023").resolved()
    m = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"embed.W_E": (67, 500), "mlp.W_in": (500, 24), "mlp.W_out": (24, 500)}
    assert shapes == mlp_shapes(cfg)
    # haiku: VarianceScaling(2) truncated normal for W_E (fan_in 67), 1/sqrt(fan_in) for linears
    W_E, W_in = m.embed.W_E, m.mlp.W_in
    torch.testing.assert_close(W_E.std().item(), math.sqrt(2 / 67), rtol=0.03, atol=0)
    assert W_E.abs().max() <= 2 * math.sqrt(2 / 67) / 0.8796 + 1e-6
    torch.testing.assert_close(W_in.std().item(), 0.8796 / math.sqrt(500), rtol=0.05, atol=0)
    par = build_model(get_preset("pair-parity"))
    assert {k: tuple(v.shape) for k, v in par.state_dict().items()} == {"mlp.W_in": (31, 64),
                                                                        "mlp.W_out": (64, 1)}


def test_circle_embedding_is_fixed_and_normalised():
    cfg = get_preset("pair-five-neurons").resolved()
    m = build_model(cfg)
    E = m.embed.W_E
    assert not E.requires_grad and E.shape == (67, 2)
    torch.testing.assert_close(E.norm(dim=0), torch.ones(2))
    torch.testing.assert_close(E[1], torch.tensor([math.cos(2 * math.pi / 67), math.sin(2 * math.pi / 67)])
                               / math.sqrt(67 / 2))
    torch.testing.assert_close(circle_embedding(67), E.detach())


def test_forward_and_ensemble_path_agree():
    cfg = _mlp(**{"task.p": "11", "model.d_embed": "6", "model.d_hidden": "5"}).resolved()
    models = [build_model(cfg, seed=s) for s in (0, 1)]
    tokens = make_data(cfg.task).tokens
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in
              dict(models[0].named_parameters())}
    out = mlp_logits(cfg, params, torch.stack([tokens, tokens]))
    for e, m in enumerate(models):
        ref = torch.relu(m.embed.W_E[tokens[:, 0]] @ m.mlp.W_in + m.embed.W_E[tokens[:, 1]] @ m.mlp.W_in)
        ref = ref @ m.mlp.W_out @ m.embed.W_E.T
        torch.testing.assert_close(out[e, :, 0], ref.detach())
        torch.testing.assert_close(m(tokens)[:, 0].detach(), ref.detach())


def test_parity_logits_are_binary_cross_entropy():
    cfg = get_preset("pair-parity").resolved()
    m: MLPModel = build_model(cfg)
    b = build_task(cfg.task).sample(64, generator(0, 1))
    logits = m(b.tokens)[:, 0]
    x = torch.cat([b.tokens.float(), torch.ones(64, 1)], 1)
    z = (torch.relu(x @ m.mlp.W_in) @ m.mlp.W_out)[:, 0]
    ce = torch.nn.functional.cross_entropy(logits, b.labels[:, 0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, b.labels[:, 0].float())
    torch.testing.assert_close(ce, bce)


def test_construct_star_cli(tmp_path, capsys):
    out = tmp_path / "star"
    assert main(["construct", "star", "--p", "67", "--neurons", "5", "--act", "relu", "--freqs", "4,5,7",
                 "--out", str(out)]) == 0
    assert "full-grid accuracy 100.00%" in capsys.readouterr().out
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 0 and row["train_acc"] == 1.0 and row["test_acc"] == 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["d_hidden"] == 15 and cfg["model"]["d_embed"] == 6
    assert main(["construct", "star", "--p", "67", "--out", str(out)]) == 2  # not empty
    assert main(["construct", "star", "--p", "64", "--out", str(tmp_path / "x")]) == 2  # not an odd prime
    assert main(["construct", "star", "--freqs", "4,x", "--out", str(tmp_path / "y")]) == 2


def _assert_fused_equals_autograd(cfg, params, tok, lab, dtype):
    """models.mlp_fused against mlp_logits + slot_nll on 6 members (a chunk of 4 and one of 2):
    the loss, the logits and every weight gradient, with a different d_loss per member."""
    from groklab.models.mlp_fused import fused_mlp_loss
    from groklab.train.step import slot_nll

    w = torch.arange(1.0, 7.0, dtype=dtype)
    p1 = params()
    l1 = slot_nll(mlp_logits(cfg, p1, tok), lab[..., None], dtype).mean((1, 2))
    (l1 * w).sum().backward()
    p2 = params()
    l2, logits = fused_mlp_loss(cfg, p2, tok, lab, dtype)
    (l2 * w).sum().backward()
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(logits, mlp_logits(cfg, p1, tok).detach())
    for k in p1:
        torch.testing.assert_close(p2[k].grad, p1[k].grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("overrides", [{}, {"model.act_fn": "quadratic"}, {"model.embed": "untied"},
                                       {"model.collapsed_in": "true", "model.collapsed_out": "true"}])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_loss_equals_the_autograd_path(overrides, dtype):
    """models.mlp_fused: the loss and every weight gradient equal mlp_logits + slot_nll's."""
    cfg = _mlp(**{"task.p": "13", "model.d_embed": "8", "model.d_hidden": "6", **overrides}).resolved()
    models = [build_model(cfg, seed=s) for s in range(6)]  # 6 members: a chunk of 4 and one of 2
    names = [k for k, _ in models[0].named_parameters()]

    def params():
        return {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]).requires_grad_()
                for k in names}

    d = make_data(cfg.task)
    tok = torch.stack([d.tokens[d.train_idx.roll(e)] for e in range(6)])  # each member its own order
    lab = torch.stack([d.labels[d.train_idx.roll(e)] for e in range(6)])
    _assert_fused_equals_autograd(cfg, params, tok, lab, dtype)


@pytest.mark.parametrize("act_fn", ["relu", "quadratic"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_bits_loss_equals_the_autograd_path(act_fn, dtype):
    """models.mlp_fused.BitsMLPLoss (sparse parity): loss, logits and both weight gradients equal
    mlp_logits + slot_nll's, with a different d_loss per member and a chunk of 4 plus one of 2."""
    from groklab.models.mlp_fused import has_fused_mlp_loss

    cfg = apply_overrides(get_preset("pair-parity"), {"model.act_fn": act_fn, "model.d_hidden": "9",
                                                       "task.n_bits": "10", "task.n_train": "40"}).resolved()
    assert has_fused_mlp_loss(cfg) and not has_fused_mlp_loss(cfg, n_members=1)
    models = [build_model(cfg, seed=s) for s in range(6)]
    names = [k for k, _ in models[0].named_parameters()]

    def params():
        return {k: torch.stack([dict(m.named_parameters())[k].detach() * 3 for m in models]).requires_grad_()
                for k in names}  # x3: logits of several units, so both classes' losses matter

    b = build_task(cfg.task).data(None).train
    tok = torch.stack([b.tokens.roll(e, 0) for e in range(6)])  # each member its own order
    lab = torch.stack([b.labels[..., 0].roll(e, 0) for e in range(6)])
    assert 0 < lab.float().mean() < 1
    _assert_fused_equals_autograd(cfg, params, tok, lab, dtype)


def test_exact_softmax_ce_keeps_float64_precision_where_float32_rounds():
    """models.softmax_ce.softmax_ce_exact (the fused pair loss under a float64 loss dtype): on
    float32 logits of a sure model (losses 1e-9 to 1e-4, where float64 itself is still exact to
    1e-7), the loss and d loss / d logits equal the float64 log-softmax's to 1e-5 relative, and the
    plain float32 form misses by far more (the test's power)."""
    from groklab.models.softmax_ce import softmax_ce_exact, softmax_ce_plain

    g = torch.Generator().manual_seed(0)
    c, N, C = 3, 40, 67
    lab = torch.randint(0, C, (c, N, 1), generator=g)
    lg = torch.randn(c, N, C, generator=g) * 2
    lg.scatter_add_(-1, lab[:, :30], torch.full((c, 30, 1), 22.0))  # 30 sure examples per member, 10 not
    logp = lg.double().log_softmax(-1)
    ref_loss = -logp.gather(-1, lab).squeeze(-1)
    ref_g = (logp.exp() - torch.zeros_like(logp).scatter_(-1, lab, 1.0)) / N
    assert ref_loss[:, :30].max() < 1e-4 and ref_loss[:, 30:].min() > 1e-3
    loss, grad = softmax_ce_exact(lg, lab, N)
    assert loss.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_g, rtol=1e-5, atol=1e-30)
    p_loss, p_grad = softmax_ce_plain(lg, lab, N, torch.float32)
    rel = ((p_loss.double() - ref_loss).abs() / ref_loss)[:, :30]
    assert rel.max() > 0.1  # float32 log S rounds a 1e-9 loss to 0 or to multiples of 2^-24
    p_rel = ((p_grad.double() - ref_g).abs() / ref_g.abs()).gather(-1, lab)[:, :30]
    assert p_rel.max() > 0.1
