"""Averaging nested widths: each reply trained one width of the model, averaged coordinate by
coordinate over the replies that hold it; and the automatic method's rounds end to end."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from interrupt import Stop, stop_after
from torch import nn

from fedprune.config import from_dict
from fedprune.federated import run_simulation
from fedprune.federated.averaging import average_nested, average_round
from fedprune.federated.transport import TrainReply
from fedprune.pruners.nested import NestedPruner  # noqa: F401 - registers "auto"


class Line(nn.Module):
    """A 'model' of one weight vector of 4, whose widths keep its first 1, 2 or 4 values."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))


def _fed(**over):
    return from_dict({"fed": {"clip_factor": 0.0, **over}}).fed


def _nested(full_values, widths, replies_values, counts, **fed):
    """Average replies of the given widths (each a list of values for its first entries)."""
    model = Line()
    with torch.no_grad():
        model.w.copy_(torch.tensor(full_values))
    subs, maps = [], []
    for k in widths:
        sub = Line(k)
        with torch.no_grad():
            sub.w.copy_(model.w[:k])
        subs.append(sub)
        maps.append({"w": torch.arange(k)})
    assign = [widths.index(len(v)) for v in replies_values]
    replies = [TrainReply(i, ({"w": torch.tensor(v)},), n)
               for i, (v, n) in enumerate(zip(replies_values, counts, strict=True))]
    out = average_nested(1, _fed(**fed), model, subs, maps, assign, replies, arch_version=0,
                         sizes=None)
    return model.w.detach().tolist(), out


def test_each_coordinate_is_the_mean_over_the_replies_that_hold_it():
    got, out = _nested([0.0, 0.0, 0.0, 9.0], [1, 2, 4],
                       [[1.0], [3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], [1, 1, 2])
    # coordinate 0: (1 + 3 + 2 x 5) / 4; 1: (4 + 2 x 6) / 3; 2, 3: the one reply's
    assert got == pytest.approx([3.5, 16 / 3, 7.0, 8.0])
    assert out.clients == 3 and not out.skipped
    # a coordinate no reply holds keeps its value
    got, _ = _nested([0.0, 0.0, 0.0, 9.0], [1, 2, 4], [[1.0], [3.0, 4.0]], [1, 1])
    assert got == pytest.approx([2.0, 4.0, 0.0, 9.0])


def test_median_and_trimmed_mean_count_each_holder_once():
    values = [[1.0], [2.0, 10.0], [3.0, 20.0, 1.0, 1.0], [100.0, 30.0, 2.0, 2.0]]
    got, _ = _nested([0.0] * 4, [1, 2, 4], values, [5, 1, 1, 1], aggregator="median")
    assert got == pytest.approx([2.5, 20.0, 1.5, 1.5])
    got, _ = _nested([0.0] * 4, [1, 2, 4], values, [5, 1, 1, 1], aggregator="trimmed_mean",
                     trim_fraction=0.25)
    # coordinate 0: 1 2 3 100 -> 2 3; coordinate 1: 10 20 30 (trim 0) -> 20; 2, 3: 1 2
    assert got == pytest.approx([2.5, 20.0, 1.5, 1.5])


def test_at_one_width_it_is_the_usual_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    replies = []
    for i in range(5):
        state = {k: v + torch.randn_like(v) * (10.0 if i == 4 else 0.1)
                 if v.is_floating_point() else v + i for k, v in model.state_dict().items()}
        replies.append(TrainReply(i, (state,), 10 + i))
    for fed in ({"clip_factor": 0.0}, {"clip_factor": 3.0},
                {"aggregator": "median", "clip_factor": 3.0},
                {"aggregator": "trimmed_mean", "trim_fraction": 0.2, "clip_factor": 0.0}):
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        maps = {k: torch.arange(v.numel()) for k, v in model.state_dict().items()
                if v.is_floating_point()}
        ra = average_round(1, _fed(**fed), [a], replies, arch_version=0, sizes=None)
        rb = average_nested(1, _fed(**fed), b, [copy.deepcopy(model)], [maps], [0] * 5,
                            replies, arch_version=0, sizes=None)
        for k, v in a.state_dict().items():
            assert torch.allclose(v.float(), b.state_dict()[k].float(), atol=1e-6), (fed, k)
        assert [c.index for c in ra.clips] == [c.index for c in rb.clips]


def test_a_reply_unfit_for_its_width_is_rejected_and_the_bound_scales_with_width():
    # a reply of width 2 that sent 4 values, and one with NaN: both rejected
    _, out = _nested([0.0] * 4, [1, 2, 4], [[1.0], [1.0, 2.0], [2.0, 2.0, 2.0, 2.0]],
                     [1, 1, 1])
    assert not out.rejections
    model = Line()
    subs = [Line(2), Line(4)]
    maps = [{"w": torch.arange(2)}, {"w": torch.arange(4)}]
    replies = [TrainReply(0, ({"w": torch.ones(4)},), 1),
               TrainReply(1, ({"w": torch.tensor([math.nan, 1.0])},), 1),
               TrainReply(2, ({"w": torch.ones(4)},), 1)]
    out = average_nested(1, _fed(min_replies=1), model, subs, maps, [0, 0, 1], replies,
                         arch_version=0, sizes=None)
    assert [r.index for r in out.rejections] == [0, 1] and out.clients == 1
    # root-mean-square per coordinate: a wide update twice as long is not clipped for it,
    # one ten times longer per coordinate is
    replies = [TrainReply(0, ({"w": torch.ones(2)},), 1),
               TrainReply(1, ({"w": torch.ones(2)},), 1),
               TrainReply(2, ({"w": torch.ones(4)},), 1),
               TrainReply(3, ({"w": torch.full((4,), 10.0)},), 1)]
    out = average_nested(1, _fed(clip_factor=3.0), Line(), subs, maps, [0, 0, 1, 1], replies,
                         arch_version=0, sizes=None)
    assert [c.index for c in out.clips] == [3]


# ----------------------------------------------------------------------------- end to end

TINY = {"threads": 1, "data": {"num_clients": 6, "val_fraction": 0.2},
        "train": {"local_epochs": 1},
        "fed": {"rounds": 8, "clients_per_round": 4, "eval_every": 2},
        "prune": {"method": "auto", "round_to": 8, "max_accuracy_drop": 0.5,
                  "start_round": 3, "interval": 2, "max_prune_round": 7}}


def _rows(d):
    return [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]


def test_the_automatic_method_searches_in_flight_cuts_once_and_never_costs_more_than_dense(
        tmp_path):
    res = run_simulation(from_dict(TINY), tmp_path / "run")
    s, rows = res.summary, _rows(tmp_path / "run")
    nested = s["nested"]
    assert nested["ladder"][-1] == [32, 64] and nested["ladder"][0] == [8, 8]
    assert nested["cut_round"] in (5, 7) and s["prune_steps"] == 1
    assert list(s["widths_final"].values()) != [32, 64]
    cut = nested["cut_round"]
    judged = [r for r in rows if (r["nested"] or {}).get("judged")]
    assert [r["round"] for r in judged] == list(range(3, cut + 1, 2))
    last = judged[-1]["nested"]["judged"]
    # every narrower width measured in one query per client, the chosen one the narrowest
    # that fits
    assert len(last["widths"]) == len(nested["ladder"]) - 1
    fits = [w["fits"] for w in last["widths"]]
    assert last["chosen"] == last["widths"][fits.index(True)]["widths"]
    assert judged[-2]["nested"]["judged"]["chosen"] == last["chosen"] or cut == 7
    # no client spends more than a dense FedAvg client on the same samples, in any round
    assert max(r["client_flops_peak"] for r in rows) <= 1.0
    assert s["client_flops_peak"] <= 1.0
    # less traffic and compute than dense, while searching too
    for r in rows[:cut]:
        assert r["messages"]["train"] == 4
    assert s["bytes_total"] < s["bytes_total_dense"]
    assert s["client_flops_total"] < s["client_flops_total_dense"]
    # after the cut: the small model, trained as an ordinary one
    assert all(r["widths"] == s["widths_final"] for r in rows[cut:])


@pytest.mark.parametrize("stop_at", [2, 3, 6])
def test_a_resumed_search_ends_bit_identical(tmp_path, stop_at):
    full, cut = tmp_path / "full", tmp_path / "cut"
    ref = run_simulation(from_dict(TINY), full)
    with pytest.raises(Stop):
        run_simulation(from_dict(TINY), cut, on_round=stop_after(stop_at))
    res = run_simulation(from_dict(TINY), cut, resume=True)
    a, b = ref.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(_rows(full)) == strip(_rows(cut))


def test_without_a_narrower_width_nothing_is_searched(tmp_path):
    cfg = from_dict({**TINY, "model": {"widths": [8, 16]},
                     "prune": {**TINY["prune"], "round_to": 16}})
    res = run_simulation(cfg, tmp_path / "run")
    assert res.summary["nested"]["status"] == "stopped"
    assert "no width narrower" in res.summary["nested"]["stop_reason"]
    assert res.summary["bytes_total"] == res.summary["bytes_total_dense"]


def test_chunking_changes_no_bit(monkeypatch):
    from fedprune.federated import averaging

    values = [[1.0], [2.0, 10.0], [3.0, 20.0, 1.0, 1.0], [100.0, 30.0, 2.0, 2.0]]
    for agg in ("fedavg", "median", "trimmed_mean"):
        whole, _ = _nested([0.5] * 4, [1, 2, 4], values, [5, 1, 1, 1], aggregator=agg,
                           trim_fraction=0.25)
        monkeypatch.setattr(averaging, "CHUNK", 3)
        chunked, _ = _nested([0.5] * 4, [1, 2, 4], values, [5, 1, 1, 1], aggregator=agg,
                             trim_fraction=0.25)
        monkeypatch.undo()
        assert chunked == whole


def _pruner(prune=None, rounds=20, **over):
    from fedprune.metrics import count_flops, n_params
    from fedprune.models import new_model
    from fedprune.pruners import make_pruner

    cfg = from_dict({**TINY, "fed": {**TINY["fed"], "rounds": rounds},
                     "prune": {**TINY["prune"], **(prune or {})}, **over})
    model, spec = new_model("cnn_femnist", num_classes=10, in_channels=1, image_size=28,
                            widths=None, seed=0)
    x = spec.example_input()
    pruner = make_pruner(cfg, model=model, spec=spec, example=x,
                         params_initial=n_params(model), flops_initial=count_flops(model, x),
                         num_clients=6, has_validation=[True] * 6, train_sizes=[50] * 6,
                         val_sizes=[10] * 6)
    return pruner, model, spec


def test_a_judgement_nobody_answered_measures_nothing_and_counts_for_nothing():
    from fedprune.pruners import Validation

    pruner, model, spec = _pruner()
    silent = lambda m, s, ids, variants=(), calibrate=0: Validation(math.nan, 0, math.nan)
    for rnd in (3, 5):
        pruner.nested(rnd, model, spec, [0, 1, 2, 3])
        step = pruner.after_aggregate(rnd, model, spec, silent)
        assert step.record["judged"]["decision"] == "unanswered" and not step.changed
        assert pruner.state.status == "search"
    pruner.nested(7, model, spec, [0, 1, 2, 3])
    step = pruner.after_aggregate(7, model, spec, silent)  # the deadline
    assert pruner.state.status == "stopped" and not step.changed
    assert "no client answered" in pruner.state.stop_reason


def test_nothing_fitting_is_final_only_at_the_deadline():
    from fedprune.pruners import Validation

    pruner, model, spec = _pruner()
    n = len(pruner.ladder) - 1
    ids = [0, 1, 2]

    def costly(m, s, clients, variants=(), calibrate=0):
        # the full width right on every sample, every narrower width wrong on every one
        full = Validation(1.0, 30, 0.1, tuple((c, 1.0, 10) for c in ids))
        wrong = Validation(0.0, 30, 3.0, tuple((c, 0.0, 10) for c in ids))
        return full._replace(variants=(wrong,) * n)

    for rnd, decision in ((3, "search on"), (5, "search on"), (7, "keep")):
        pruner.nested(rnd, model, spec, [0, 1, 2, 3])
        step = pruner.after_aggregate(rnd, model, spec, costly)
        assert step.record["judged"]["decision"] == decision and not step.changed
    assert pruner.state.status == "stopped" and pruner.state.cut_round is None


@pytest.mark.parametrize("decide, decisions", [
    ("agree", ("search on", "search on", "keep")), ("pooled", ("search on", "cut"))])
def test_two_judgements_pooled_cut_what_neither_shows_alone(decide, decisions):
    from fedprune.pruners import Validation

    pruner, model, spec = _pruner({"decide": decide, "max_accuracy_drop": 0.01,
                                   "trim_fraction": 0.0})  # the plain pooled differences
    n = len(pruner.ladder) - 1
    ids = [0, 1, 2, 3]

    def close(m, s, clients, variants=(), calibrate=0):
        # every narrower width half a point below the full one (0 or 1 point per client):
        # 0.5 + 2 x 0.29 standard errors misses 1 point; pooled over two, 0.5 + 2 x 0.20 fits
        full = Validation(1.0, 400, 0.1, tuple((c, 1.0, 100) for c in ids))
        narrow = Validation(0.995, 400, 0.2, tuple(
            (c, 1.0 - 0.01 * (c % 2), 100) for c in ids))
        return full._replace(variants=(narrow,) * n)

    for rnd, decision in zip((3, 5, 7), decisions, strict=False):
        pruner.nested(rnd, model, spec, [0, 1, 2, 3])
        step = pruner.after_aggregate(rnd, model, spec, close)
        assert step.record["judged"]["decision"] == decision
    judged = step.record["judged"]
    if decide == "pooled":
        assert step.changed and pruner.state.cut_round == 5
        assert judged["chosen"] == judged["widths"][0]["widths"]  # the narrowest
        w = judged["widths"][0]
        assert not w["fits"] and w["pooled_fits"]
        assert w["pooled_cost"] == pytest.approx(0.005)
        assert w["pooled_bound"] == pytest.approx(0.005 + 2 * w["cost_se"] / math.sqrt(2))
    else:
        assert not step.changed and pruner.state.cut_round is None
    with pytest.raises(Exception, match="prune.decide"):
        from_dict({"prune": {"decide": "vote"}})


def test_pooling_weights_each_judgement_by_its_precision():
    # an early judgement: 1.3 +- 0.5 points; a later, more precise one: 0.1 +- 0.3.  The
    # mean of the two (0.7 +- 0.29) plus 2 standard errors misses 1 point; weighted by
    # precision (0.42 +- 0.26) it fits
    pruner, _, _ = _pruner({"max_accuracy_drop": 0.01})

    def judgement(cost, se, samples=3000):
        return {"samples": samples, "widths": [{"cost": cost, "cost_se": se}]}

    before, now = judgement(0.013, 0.005), judgement(0.001, 0.003)
    assert pruner._pooled(before, now, 1) == 0
    w = now["widths"][0]
    w1, w2 = 1 / 0.005 ** 2, 1 / 0.003 ** 2
    assert w["pooled_cost"] == pytest.approx((0.013 * w1 + 0.001 * w2) / (w1 + w2))
    assert w["pooled_se"] == pytest.approx((w1 + w2) ** -0.5)
    assert w["pooled_bound"] == pytest.approx(w["pooled_cost"] + 2 * w["pooled_se"])
    assert w["pooled_fits"] and w["pooled_se"] < min(0.005, 0.003)
    mean = (0.013 + 0.001) / 2 + 2 * math.sqrt(0.005 ** 2 + 0.003 ** 2) / 2
    assert mean > 0.01  # the unweighted mean would not have cut
    # two costly judgements do not fit, however precise
    before, now = judgement(0.02, 0.001), judgement(0.015, 0.001)
    assert pruner._pooled(before, now, 1) == 1 and not now["widths"][0]["pooled_fits"]
    # a standard error of 0 (every client's difference the same) counts as one sample's
    # share: the other judgement still counts, and nothing divides by zero
    before, now = judgement(0.03, 0.0, samples=100), judgement(0.0, 0.0, samples=100)
    assert pruner._pooled(before, now, 1) == 1
    w = now["widths"][0]
    assert w["pooled_cost"] == pytest.approx(0.015) and w["pooled_se"] == pytest.approx(
        0.01 / math.sqrt(2))
    # a width a judgement could not measure is not pooled and does not fit
    before, now = judgement(None, None), judgement(0.0, 0.001)
    assert pruner._pooled(before, now, 1) == 1
    assert "pooled_cost" not in now["widths"][0] and not now["widths"][0]["pooled_fits"]


def test_a_client_without_room_to_validate_is_excused_and_none_spends_more_than_dense(
        tmp_path):
    # one local epoch and half of each client's samples held out: validating every width
    # leaves no room for training the full width, and for a wide validation split none
    cfg = from_dict({**TINY, "data": {"num_clients": 6, "val_fraction": 0.6},
                     "prune": {**TINY["prune"], "round_to": 4, "val_clients": 6}})
    res = run_simulation(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert max(r["client_flops_peak"] for r in rows) <= 1.0
    judged = [r["nested"]["judged"] for r in rows if (r["nested"] or {}).get("judged")]
    assert judged and all(j["clients"] < 6 for j in judged)  # some were excused
    assert res.summary["client_flops_peak"] <= 1.0


# ----------------------------------------------------------------------------- batch norm

class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3, momentum=0.01)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).relu().mean(dim=(2, 3)))


def test_calibration_re_estimates_the_statistics_on_a_copy_from_the_first_samples():
    from fedprune.federated.client import calibrate_batchnorm
    torch.manual_seed(0)
    net, x = ConvBN().eval(), torch.randn(40, 1, 5, 5) * 3 + 1
    before = copy.deepcopy(net.state_dict())
    cal = calibrate_batchnorm(net, x, samples=32, batch_size=16)
    # the model itself is untouched, the copy's weights too; only its statistics change
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in cal.state_dict().items()
               if "running" not in k and "num_batches" not in k)
    assert not cal.training
    with torch.no_grad():
        h = [net.conv(x[i:i + 16]) for i in (0, 16)]  # two batches of the first 32 samples
    mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in h]).mean(0)
    var = torch.stack([b.var(dim=(0, 2, 3)) for b in h]).mean(0)  # unbiased, as BN keeps
    assert torch.allclose(cal.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(cal.bn.running_var, var, atol=1e-4)
    # more samples asked than there are: all of them; none, or no batch norm: the model itself
    assert calibrate_batchnorm(net, x[:8], samples=100, batch_size=16).bn.num_batches_tracked == 1
    assert calibrate_batchnorm(net, x, samples=0, batch_size=16) is net
    plain = nn.Sequential(nn.Flatten(), nn.Linear(25, 2))
    assert calibrate_batchnorm(plain, x, samples=32, batch_size=16) is plain


def test_a_width_measured_with_statistics_that_are_not_its_own_is_re_estimated_first():
    from fedprune.federated.client import evaluate_widths
    torch.manual_seed(1)
    x = torch.randn(256, 1, 5, 5)
    teacher = ConvBN()
    teacher.train()
    with torch.no_grad():
        teacher.head.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]))
        teacher.head.bias.zero_()
        teacher(x)  # statistics of this data (a momentum of 0.01 barely moves them)
        # someone else's statistics (a wider width's, say)
        teacher.bn.running_mean.copy_(torch.tensor([2.0, -2.0, 1.0]))
        teacher.bn.running_var.copy_(torch.tensor([0.05, 4.0, 0.2]))
    teacher.eval()
    calibrated = copy.deepcopy(teacher)
    calibrated.bn.reset_running_stats()
    calibrated.bn.momentum = None
    calibrated.train()
    with torch.no_grad():
        for i in range(0, 128, 32):
            calibrated(x[i:i + 32])
    calibrated.eval()
    with torch.no_grad():
        y = calibrated(x).argmax(1)  # labels the calibrated net gets all right
    assert 0.2 < y.float().mean() < 0.8  # both classes
    (raw,) = evaluate_widths([teacher], x, y)
    (cal,) = evaluate_widths([teacher], x, y, train_x=x, calibrate=128, batch_size=32)
    assert cal[0] == 1.0 and raw[0] < 1.0


def test_a_batch_norm_model_s_widths_are_calibrated_and_the_passes_counted(tmp_path):
    # three local epochs: room for every validating client to calibrate and measure
    base = {**TINY, "model": {"name": "tiny_resnet", "widths": [8, 16, 16]},
            "train": {"local_epochs": 3},
            "prune": {**TINY["prune"], "round_to": 4, "max_accuracy_drop": 1.0}}
    seen = []
    from fedprune.federated import loop

    real = loop.LocalTransport.validate

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.append((kwargs.get("calibrate", args[6] if len(args) > 6 else 0), out))
        return out

    loop.LocalTransport.validate = spy
    try:
        cal = run_simulation(from_dict(base), tmp_path / "cal")
        off = run_simulation(from_dict({**base, "prune": {**base["prune"],
                                                          "bn_calibration": 0}}),
                             tmp_path / "off")
    finally:
        loop.LocalTransport.validate = real
    n_cal = sum(1 for c, _ in seen if c == 128)
    assert n_cal >= 1 and n_cal + sum(1 for c, _ in seen if c == 0) == len(seen)
    # the first judgement (same model, same clients) asked for more forward passes: the
    # calibration is counted, and no client spends more than a dense one regardless
    rows_cal, rows_off = _rows(tmp_path / "cal"), _rows(tmp_path / "off")
    first = next(i for i, r in enumerate(rows_cal) if (r["nested"] or {}).get("judged"))
    assert rows_cal[first]["messages"] == rows_off[first]["messages"]
    assert rows_cal[first]["client_flops_val"] > rows_off[first]["client_flops_val"] > 0
    assert max(r["client_flops_peak"] for r in rows_cal) <= 1.0
    assert cal.summary["client_flops_peak"] <= 1.0 and off.summary["client_flops_peak"] <= 1.0


def test_a_model_without_batch_norm_sends_no_calibration(tmp_path):
    assert _pruner()[0].calibrate == 0  # cnn_femnist: no batch norm
    a = run_simulation(from_dict(TINY), tmp_path / "a")
    b = run_simulation(from_dict({**TINY, "prune": {**TINY["prune"], "bn_calibration": 0}}),
                       tmp_path / "b")
    # the same run (every message carries the configuration's text, one key's value longer)
    strip = lambda rows: [{k: v for k, v in r.items()
                           if k != "seconds" and not k.startswith("bytes")} for r in rows]
    assert strip(_rows(tmp_path / "a")) == strip(_rows(tmp_path / "b"))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.summary["client_flops_total"] == b.summary["client_flops_total"]


# ----------------------------------------------------------------- ordered dropout per batch


def _narrower(model, record, example, multiple, step):
    """Width ``step`` of ``model``'s ladder on ``multiple`` channels: its sub-model record and
    its dropout masks on ``model``."""
    from fedprune.pruning.widths import channel_scores, dropout_masks, keep_of, ladder, sub_record

    full = {g["root"]: g["channels"] for g in record["groups"]}
    narrow = sub_record(record, channel_scores(model, example), ladder(full, multiple)[step])
    (masks,) = dropout_masks(model, record, [keep_of(narrow)], example)
    return narrow, masks


def test_a_batch_at_a_narrower_width_trains_that_width_alone_and_leaves_the_rest():
    from fedprune.config import TrainConfig
    from fedprune.federated.client import Dropout, train_local
    from fedprune.models import new_model
    from fedprune.pruning.widths import gather_maps, sub_model

    model, spec = new_model("tiny_resnet", num_classes=10, in_channels=1, image_size=28,
                            widths=[16, 16, 32], seed=0)
    example = spec.example_input()
    narrow, masks = _narrower(model, spec.record, example, 4, 0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    cfg = TrainConfig(local_epochs=1, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.0)
    alone = sub_model(model, narrow, example)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    held = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # it runs as the sub-model, no fallback
        got, _, _ = train_local(held, x, y, cfg, torch.Generator().manual_seed(1),
                                dropout=Dropout((0,), (masks,)))
    ref, _, _ = train_local(alone, x, y, cfg, torch.Generator().manual_seed(1))
    maps = gather_maps(model, narrow, example)
    moved = 0
    for k, pos in maps.items():
        torch.testing.assert_close(got[k].reshape(-1)[pos], ref[k].reshape(-1), atol=1e-6,
                                   rtol=1e-5)
        out = masks[k].reshape(-1) == 0  # outside the width: as before (BN statistics too)
        assert torch.equal(got[k].reshape(-1)[out], before[k].reshape(-1)[out]), k
        moved += int((got[k].reshape(-1)[pos] != before[k].reshape(-1)[pos]).sum())
    assert moved > 0
    with pytest.raises(ValueError, match="batch widths for 1 batches"):
        train_local(copy.deepcopy(model), x, y, cfg, torch.Generator().manual_seed(1),
                    dropout=Dropout((0, -1), (masks,)))
    with pytest.raises(ValueError, match="not -1 or one of"):
        Dropout((1,), (masks,))


@pytest.mark.parametrize("name, widths", [
    ("cnn_femnist", [32, 64]), ("tiny_resnet", [16, 16, 32]), ("inception", None)])
def test_a_narrower_batch_runs_as_its_sub_model_at_its_cost(name, widths):
    from torch.utils.flop_counter import FlopCounterMode

    from fedprune.federated.client import Slices, _narrow_forward, _sliced_forward
    from fedprune.models import new_model
    from fedprune.pruning.widths import sub_model

    model, spec = new_model(name, num_classes=10, in_channels=1, image_size=28, seed=0,
                            widths=widths)
    example = spec.example_input()
    narrow, masks = _narrower(model, spec.record, example, 8, 1)
    sl = Slices.of(masks)
    alone = sub_model(model, narrow, example)
    assert sl.shape == {k: tuple(v.shape) for k, v in alone.state_dict().items()
                        if v.is_floating_point()}
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model.eval()
    alone.eval()

    def flops(f):
        with FlopCounterMode(display=False) as counter:
            out = f()
        return out, counter.get_total_flops()

    got, cost = flops(lambda: _sliced_forward(model, sl, x))
    masked, held = flops(lambda: _narrow_forward(model, masks, x))
    want, sub = flops(lambda: alone(x))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(masked, want, atol=1e-5, rtol=1e-4)
    assert cost == sub < held  # the sub-model's arithmetic, not the held width's
    # a mask that is not whole rows and columns has no sub-model
    k = next(k for k, m in masks.items() if m.dim() > 1)
    odd = {**masks, k: masks[k].clone()}
    odd[k].view(-1)[odd[k].view(-1).nonzero()[0]] = 0
    assert Slices.of(odd) is None


def test_a_model_whose_narrower_width_cannot_run_sliced_trains_it_masked():
    from fedprune.config import TrainConfig
    from fedprune.federated.client import Dropout, train_local
    from fedprune.pruning.apply import initial_record
    from fedprune.pruning.widths import gather_maps, sub_model

    class Depthwise(nn.Module):  # groups = channels: a sliced weight no longer fits groups
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 16, 3, padding=1)
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.dw(torch.relu(self.conv(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Depthwise()
    example = torch.zeros(1, 1, 8, 8)
    narrow, masks = _narrower(model, initial_record(model, example), example, 4, 0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    cfg = TrainConfig(local_epochs=1, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.0)
    alone = sub_model(model, narrow, example)
    with pytest.warns(RuntimeWarning, match="does not run narrower width 0 as its sub-model"):
        got, _, _ = train_local(copy.deepcopy(model), x, y, cfg,
                                torch.Generator().manual_seed(1),
                                dropout=Dropout((0,), (masks,)))
    ref, _, _ = train_local(alone, x, y, cfg, torch.Generator().manual_seed(1))
    for k, pos in gather_maps(model, narrow, example).items():
        torch.testing.assert_close(got[k].reshape(-1)[pos], ref[k].reshape(-1), atol=1e-6,
                                   rtol=1e-5)

    class TrainingOnly(Depthwise):  # width-dependent only in training: the check cannot see it
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(16, 16, 3, padding=1)
            self.register_buffer("noise", torch.zeros(1, 16, 1, 1), persistent=False)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            if self.training:
                h = h + self.noise
            return self.fc(self.dw(h).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = TrainingOnly()
    _, masks = _narrower(model, initial_record(model, example), example, 4, 0)
    with pytest.warns(RuntimeWarning, match="its training forward fails sliced"):
        got, _, _ = train_local(copy.deepcopy(model), x, y, cfg,
                                torch.Generator().manual_seed(1),
                                dropout=Dropout((0,), (masks,)))
    assert all(torch.isfinite(v).all() for v in got.values())


def test_ordered_dropout_per_batch_costs_less_compute_and_sends_the_narrower_widths(tmp_path):
    per_client = run_simulation(from_dict(
        {**TINY, "prune": {**TINY["prune"], "ordered_dropout": "client"}}), tmp_path / "client")
    cfg = from_dict(TINY)  # the default: "batch"
    assert cfg.prune.ordered_dropout == "batch"
    per_batch = run_simulation(cfg, tmp_path / "batch")
    a, b = _rows(tmp_path / "client"), _rows(tmp_path / "batch")
    # the same widths drawn for the same clients (the stream does not depend on the model):
    # the batch mode's train messages carry the narrower widths, and its clients spend less
    assert a[0]["messages"] == b[0]["messages"]
    assert b[0]["bytes_down"] > a[0]["bytes_down"] and b[0]["bytes_up"] == a[0]["bytes_up"]
    assert b[0]["client_flops_train"] < a[0]["client_flops_train"]
    assert max(r["client_flops_peak"] for r in b) <= 1.0
    assert per_batch.summary["nested"]["status"] == "stopped"
    assert per_batch.summary["client_flops_total"] < per_client.summary["client_flops_total"]
    # resumed mid-search: bit for bit
    with pytest.raises(Stop):
        run_simulation(cfg, tmp_path / "cut", on_round=stop_after(3))
    res = run_simulation(cfg, tmp_path / "cut", resume=True)
    s1, s2 = per_batch.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    with pytest.raises(Exception, match="prune.ordered_dropout"):
        from_dict({"prune": {"ordered_dropout": "sometimes"}})


def test_a_wide_update_cannot_pass_on_coordinates_too_few_others_hold():
    # four updates of width 2 along (1, 1); a width-4 rogue flips the shared coordinates and
    # pushes its own two hard: judged over the shared ones only, it is left out
    values = [[1.0, 1.1], [0.9, 1.0], [1.1, 0.9], [1.0, 1.0], [-1.0, -1.0, 9.0, 9.0]]
    _, out = _nested([0.0] * 4, [2, 4], values, [1] * 5)
    assert [a.index for a in out.against] == [4]


def test_a_nested_update_pointing_against_the_median_is_left_out_whatever_its_width():
    # updates of widths 2 and 4 along (1, 1, 1, 1); client 3's (width 2) points back
    values = [[1.0, 1.2], [0.9, 1.1, 1.0, 0.8], [1.1, 0.9, 1.2, 1.0], [-5.0, -6.0]]
    got, out = _nested([0.0] * 4, [2, 4], values, [1, 1, 1, 1])
    assert [a.index for a in out.against] == [3] and out.against[0].cosine < 0
    assert out.clients == 4  # passed screening; one of them left out for its direction
    assert got == pytest.approx([1.0, 3.2 / 3, 1.1, 0.9])
    # off: the flip is averaged in
    got, out = _nested([0.0] * 4, [2, 4], values, [1, 1, 1, 1], min_cosine=-1.0)
    assert out.against == [] and got[0] == pytest.approx(-0.5)


@pytest.mark.parametrize("lie", ["cut", "keep"])
def test_one_lying_client_of_ten_does_not_change_the_decision(lie):
    # every narrower width 0 or 1 point below the full one, by client; client 9 answers
    # falsely within every bound the server checks: "cut" = the full model wrong on every
    # sample and every width right; "keep" = every narrower width wrong on every sample
    from fedprune.pruners import Validation

    ids = list(range(10))

    def answers(liar):
        def validate(m, s, clients, variants=(), calibrate=0):
            full, narrow = [], []
            for c in ids:
                a, b = 1.0, 1.0 - 0.01 * (c % 2)
                if liar and c == 9:
                    a, b = (0.0, 1.0) if lie == "cut" else (1.0, 0.0)
                full.append((c, a, 100))
                narrow.append((c, b, 100))
            def pool(rows):
                return Validation(sum(a for _, a, _ in rows) / 10, 1000, 0.1, tuple(rows), (),
                                  (0.1,) * 10)
            return pool(full)._replace(variants=(pool(narrow),) * len(variants))
        return validate

    def decisions(trim, liar):
        pruner, model, spec = _pruner({"max_accuracy_drop": 0.01, "trim_fraction": trim})
        out = []
        for rnd in (3, 5):
            pruner.nested(rnd, model, spec, ids[:4])
            step = pruner.after_aggregate(rnd, model, spec, answers(liar))
            out.append((step.record["judged"]["decision"], step.record["judged"]["chosen"]))
        return out

    honest = decisions(0.1, False)
    assert honest[-1][0] == "cut"
    assert decisions(0.1, True) == honest  # trimmed: the lie is left out
    assert decisions(0.0, True) != decisions(0.0, False)  # the plain mean: the lie decides
