"""The in-place KV cache holds exactly what transformers' concatenating DynamicLayer holds."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from agentark_utils.kv_cache import InPlaceLayer, can_join, drop_rows, join_rows, kv_cache


def states(batch: int, new: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, new, 4, generator=generator), torch.randn(batch, 3, new, 4, generator=generator))


# Each case: a sequence of (operation, argument) applied to both layers; after every step they must agree.
CASES = {
    "prefill then decode": [("update", (4, 7)), *[("update", (4, 1))] * 6],
    "prefix expanded, then prompts, then rows drop": [
        ("update", (1, 5)), ("select", [0, 0, 0]), ("update", (3, 4)), ("update", (3, 1)), ("select", [0, 2]),
        ("update", (2, 1)), ("select", [1]), ("update", (1, 1))],
    "overflowing the spare room": [("update", (2, 3)), *[("update", (2, 1))] * 5, ("update", (2, 6))],
    "crop, then write over the cropped tokens": [("update", (2, 6)), ("crop", -2), ("update", (2, 1))],
    "repeat and reorder, then decode": [("update", (2, 3)), ("repeat", 2), ("update", (4, 1)),
                                        ("reorder", [3, 2, 1, 0]), ("update", (4, 1))],
}


@pytest.fixture(params=[False, True], ids=["grad mode", "inference mode"])
def mode(request):
    """Decoding runs under torch.inference_mode, where views keep no `_base`."""
    with torch.inference_mode(request.param):
        yield


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_in_place_layer_holds_what_dynamic_layer_holds(steps, mode):
    ours, reference = InPlaceLayer(spare=2), DynamicLayer()
    for i, (operation, argument) in enumerate(steps):
        for layer in (ours, reference):
            if operation == "update":
                returned = layer.update(*states(*argument, seed=i))
                assert torch.equal(returned[0], layer.keys) and torch.equal(returned[1], layer.values)
            elif operation == "select":
                layer.batch_select_indices(torch.tensor(argument))
            elif operation == "crop":
                layer.crop(argument)
            elif operation == "repeat":
                layer.batch_repeat_interleave(argument)
            else:
                layer.reorder_cache(torch.tensor(argument))
        assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values), (i, operation)
        assert ours.get_seq_length() == reference.get_seq_length()


def test_decoding_within_the_spare_room_never_copies_the_cache(mode):
    layer = InPlaceLayer(spare=3)
    layer.update(*states(2, 5, seed=0))
    buffer = layer.key_buffer
    for step in range(3):
        layer.update(*states(2, 1, seed=step + 1))
        assert layer.key_buffer is buffer and layer.keys.data_ptr() == buffer.data_ptr()
    layer.update(*states(2, 1, seed=9))  # the fourth token overflows: one new, larger buffer
    assert layer.key_buffer is not buffer and layer.key_buffer.shape[-2] == 9 + 3


def test_kv_cache_swaps_only_full_attention_layers(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = type("Model", (), {"config": config})
    assert all(type(layer) is InPlaceLayer for layer in kv_cache(model, spare=4).layers)
    assert all(type(layer) is DynamicLayer for layer in kv_cache(model, in_place=False).layers)
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    config.sliding_window = 8
    assert not any(isinstance(layer, InPlaceLayer) for layer in kv_cache(model, spare=4).layers)


DROPS = {  # rows still running after a step, in the cache's current order
    "the last rows finish": [True, True, True, False, False],
    "the first rows finish": [False, False, True, True, True],
    "rows finish here and there": [True, False, True, False, True, True],
    "all but one finish": [False, False, False, True],
}


@pytest.mark.parametrize("running", DROPS.values(), ids=DROPS.keys())
def test_drop_rows_keeps_the_running_rows_and_moves_only_what_fills_a_hole(running, mode):
    from transformers import DynamicCache

    ours = DynamicCache()
    ours.layers = [InPlaceLayer(spare=2)]
    reference = DynamicLayer()
    for layer in (ours.layers[0], reference):
        layer.update(*states(len(running), 4, seed=0))
    buffer = ours.layers[0].key_buffer
    running = torch.tensor(running)
    order = drop_rows(ours, running)
    assert sorted(order.tolist()) == running.nonzero().squeeze(-1).tolist()
    reference.batch_select_indices(order)
    layer = ours.layers[0]
    assert torch.equal(layer.keys, reference.keys) and torch.equal(layer.values, reference.values)
    moved = [new for new, old in enumerate(order.tolist()) if new != old]
    assert all(not running[new] for new in moved)  # only a finished row's slot is written
    assert layer.key_buffer.data_ptr() == buffer.data_ptr()  # no new buffer: the rows stay where they were
    layer.update(*states(int(running.sum()), 1, seed=1))  # decoding goes on in the same buffer
    reference.update(*states(int(running.sum()), 1, seed=1))
    assert torch.equal(layer.keys, reference.keys) and layer.key_buffer.data_ptr() == buffer.data_ptr()


JOINS = {  # (running rows, their tokens), (joining rows, their tokens), slots no row uses after the join
    "joining rows shorter": ((3, 6), (2, 4), 0),
    "joining rows longer": ((2, 3), (3, 7), 0),
    "equal, the first slots unused": ((2, 5), (2, 5), 2),
    # the running rows' first 4 slots are padding of their own (their mask hides them), the joining
    # row's 3 slots of padding fall inside those: 4 slots go
    "the running rows' own leading padding cut": ((2, 8), (1, 5), 4),
}


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("running, joining, trim", JOINS.values(), ids=JOINS.keys())
def test_join_rows_right_aligns_both_sides_in_one_buffer(running, joining, trim, in_place, mode):
    from transformers import DynamicCache

    caches = []
    for rows, tokens in (running, joining):
        cache = DynamicCache()
        cache.layers = [InPlaceLayer(spare=3) if in_place else DynamicLayer()]
        cache.layers[0].update(*states(rows, tokens, seed=tokens))
        caches.append(cache)
    expected = [torch.cat([torch.nn.functional.pad(side, (0, 0, max(running[1], joining[1]) - side.shape[-2], 0))
                           for side in sides])[:, :, trim:]
                for sides in zip(*[(c.layers[0].keys, c.layers[0].values) for c in caches])]
    join_rows(caches[0], caches[1], max(running[1], joining[1]), trim)
    layer = caches[0].layers[0]
    assert torch.equal(layer.keys, expected[0]) and torch.equal(layer.values, expected[1])
    if in_place:  # decoding goes on in the joined buffer, with its spare room
        assert layer._views_buffer() and layer.key_buffer.shape[-2] == layer.keys.shape[-2] + 3
        buffer = layer.key_buffer
        layer.update(*states(running[0] + joining[0], 1, seed=9))
        assert layer.key_buffer is buffer


def test_only_caches_that_keep_every_token_take_joining_rows(tiny_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = type("Model", (), {"config": config})
    assert can_join(kv_cache(model, spare=4)) and can_join(kv_cache(model, in_place=False))
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    config.sliding_window = 8
    assert not can_join(kv_cache(model, spare=4))
