"""The one meter (:mod:`fedprune.federated.meter`): message sizes and the clients' compute."""

from __future__ import annotations

import numpy as np
import torch

from fedprune.config import from_dict
from fedprune.data import ClientData, FederatedData
from fedprune.federated import run_simulation
from fedprune.federated.meter import (
    CALIBRATE_KEY,
    NUMBER_BYTES,
    ClientCompute,
    Content,
    answer_content,
    keep_json,
    message_bytes,
    query_content,
    reply_content,
    train_content,
)

# cnn_femnist at widths [2, 3] on one 28x28 channel, 4 classes, counted by hand:
#   conv 1 -> 2, 5x5 valid: 24 x 24 x 2 outputs x (1 x 25) = 28,800 MACs, pool to 12 x 12
#   conv 2 -> 3, 5x5 valid:  8 x  8 x 3 outputs x (2 x 25) =  9,600 MACs, pool to 4 x 4
#   global average pool, Linear 3 -> 4:              4 x 3 =     12 MACs
HAND_FORWARD_FLOPS = 2 * (28_800 + 9_600 + 12)


def _one_client(n: int, val: int = 0) -> FederatedData:
    g = torch.Generator().manual_seed(0)
    client = ClientData(torch.randn(n, 1, 28, 28, generator=g),
                        torch.randint(0, 4, (n,), generator=g),
                        torch.randn(val, 1, 28, 28, generator=g) if val else None,
                        torch.randint(0, 4, (val,), generator=g) if val else None)
    return FederatedData([client], torch.randn(6, 1, 28, 28, generator=g),
                         torch.randint(0, 4, (6,), generator=g), 4, (1, 28, 28))


def test_client_flops_of_a_run_match_a_hand_count(tmp_path):
    # one client, one round, one epoch of one batch of 8 samples, pruning off
    cfg = from_dict({"threads": 1, "data": {"num_clients": 1, "val_fraction": 0.0},
                     "model": {"name": "cnn_femnist", "widths": [2, 3]},
                     "train": {"local_epochs": 1, "batch_size": 8},
                     "fed": {"rounds": 1, "clients_per_round": 1, "eval_every": 1},
                     "prune": {"enabled": False}})
    res = run_simulation(cfg, tmp_path, data=_one_client(8))

    # forward and backward (twice the forward) over the 8 samples
    assert res.summary["flops_initial"] == HAND_FORWARD_FLOPS
    assert res.summary["client_flops_total"] == 3 * HAND_FORWARD_FLOPS * 8
    assert res.summary["client_flops_total_dense"] == 3 * HAND_FORWARD_FLOPS * 8
    (rec,) = res.records
    assert rec.extra["client_flops_train"] == 3 * HAND_FORWARD_FLOPS * 8
    assert rec.extra["client_flops_val"] == 0


def test_every_model_a_client_trains_and_validates_is_counted():
    compute = ClientCompute(train_sizes=[10, 20, 30], val_sizes=[1, 2, 3], epochs=2)
    # two models (the global one and a candidate of half its FLOPs) on clients 0 and 2
    assert compute.train([100, 50], [0, 2]) == 3 * (100 + 50) * (10 + 30) * 2
    assert compute.validate(100, [1, 2]) == 100 * (2 + 3)
    assert compute.train([], [0]) == 0 and compute.validate(100, []) == 0


def test_a_message_counts_its_arrays_texts_and_numbers():
    w = torch.zeros(3, 4)  # 48 bytes in float32
    b = torch.zeros(2, dtype=torch.bfloat16)  # 4 bytes
    n = torch.zeros((), dtype=torch.int64)  # an integer buffer travels too: 8 bytes
    content = train_content([({"w": w, "n": n}, "{}"), ({"b": b}, "[1]")], experiment="abcd",
                            rnd=3, arch_version=1, client=7)
    # arrays, the two specs and the config as text, round, version and partition as numbers
    assert message_bytes(content) == (48 + 8 + 4) + (2 + 3 + 4) + 3 * NUMBER_BYTES
    reply = reply_content([{"w": w}], n=5, loss=0.5, arch_version=1, client=7)
    assert message_bytes(reply) == 48 + 4 * NUMBER_BYTES
    assert message_bytes(answer_content(7, (0.5, 10, 1.2))) == 4 * NUMBER_BYTES
    assert message_bytes(answer_content(7, None)) == 2 * NUMBER_BYTES
    assert message_bytes(Content({}, {"kind": "é"})) == 2  # UTF-8 bytes, not characters


def test_a_flower_message_measures_as_the_content_it_was_packed_from():
    from flwr.app import ArrayRecord, MessageType

    from fedprune.flower.client_app import client_app
    from fedprune.flower.grid import LocalGrid
    from fedprune.flower.messages import content_of, to_message

    LocalGrid(client_app, [])  # Flower's task identity, as the in-process grid sets it

    state = {"w": torch.randn(5, 2), "n": torch.tensor(3)}
    content = train_content([(state, '{"spec": 1}')], experiment="{}", rnd=1, arch_version=0,
                            client=2)
    msg = to_message(content, 7, MessageType.TRAIN, "1")
    received = content_of(msg)
    assert message_bytes(received) == message_bytes(content)
    # a numpy array measures as it travels
    arrays = ArrayRecord.from_numpy_ndarrays([np.zeros((2, 3), dtype=np.float16)])
    assert message_bytes(Content({"a": dict(arrays.items())}, {})) == 12


def test_a_query_of_nested_widths_carries_their_kept_channels_not_their_weights():
    w = torch.zeros(3, 4)
    keeps = [{"conv": [0, 2]}, {"conv": [0, 1, 2], "conv2": [5]}]
    plain = query_content(({"w": w}, "{}"), experiment="ab")
    nested = query_content(({"w": w}, "{}"), experiment="ab", variants=keeps)
    # one copy of the weights; each width as the JSON of its kept channels
    assert message_bytes(nested) - message_bytes(plain) == sum(len(keep_json(k)) for k in keeps)
    assert keep_json(keeps[1]) == '{"conv":[0,1,2],"conv2":[5]}'
    # the answer: accuracy and loss of each width, two numbers each
    assert (message_bytes(answer_content(7, (0.5, 10, 1.2), [(0.4, 1.3), (0.5, 1.2)]))
            == (4 + 4) * NUMBER_BYTES)


def test_train_and_validate_one_client_add_up_to_the_round():
    compute = ClientCompute(train_sizes=[10, 20], val_sizes=[1, 2], epochs=3)
    assert compute.train_one(100, 1) + compute.train_one(100, 0) == compute.train([100], [0, 1])
    assert compute.validate_one(100, 1) == compute.validate(100, [1])
    # batch-norm calibration: forward passes over up to that many training samples more
    assert compute.validate_one(100, 1, calibrate=5) == 100 * (2 + 5)
    assert compute.validate_one(100, 0, calibrate=500) == 100 * (1 + 10)


def test_a_query_asks_for_calibration_only_when_it_wants_one():
    w = torch.zeros(3, 4)
    plain = query_content(({"w": w}, "{}"), experiment="ab", variants=[{"conv": [0]}])
    asked = query_content(({"w": w}, "{}"), experiment="ab", variants=[{"conv": [0]}],
                          calibrate=128)
    assert CALIBRATE_KEY not in plain.values and asked.values[CALIBRATE_KEY] == 128
    assert message_bytes(asked) - message_bytes(plain) == NUMBER_BYTES  # one number


def test_a_validation_answer_needs_every_width_asked():
    from flwr.app import Message, MessageType, RecordDict

    from fedprune.flower.client_app import client_app
    from fedprune.flower.grid import LocalGrid
    from fedprune.flower.messages import to_reply, validation_answer

    LocalGrid(client_app, [])
    query = Message(RecordDict(), dst_node_id=1, message_type=MessageType.QUERY)
    full = to_reply(answer_content(3, (0.5, 10, 1.2), [(0.4, 1.3)]), query)
    assert validation_answer(full, 1) == ((0.5, 10, 1.2), [(0.4, 1.3)])
    assert validation_answer(full, 0) == ((0.5, 10, 1.2), [])
    assert validation_answer(full, 2) is None  # a width asked and not answered
    bad = to_reply(answer_content(3, (0.5, 10, 1.2), [(1.5, 1.3)]), query)
    assert validation_answer(bad, 1) is None  # an accuracy outside [0, 1]
