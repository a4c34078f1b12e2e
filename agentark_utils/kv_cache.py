"""The KV cache of the `hf` backend's decoding loop: transformers' DynamicCache, appending in place.

transformers' `DynamicLayer` concatenates each new token's keys and values onto the cache, which
copies the whole cache of every layer once per generated token. At batch 64 and 250 cached tokens
that copy was 40 % of a decoding step of the default model on 2 CPU cores (torch.profiler), more
than the attention itself. `InPlaceLayer` writes into a buffer with room to spare instead, and
the cache is a view of it: greedy and sampled text are unchanged (tests/test_kv_cache.py).

When rows finish, `drop_rows` fills their slots with the last running rows and narrows the buffer:
it copies only the rows that move. Keeping the rows in order (`batch_select_indices`) copied every
layer's whole buffer each time a row finished: 7 % of the default debate's wall time (cProfile).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class InPlaceLayer(DynamicLayer):
    """A DynamicLayer whose `keys` and `values` are views of a buffer holding `spare` more tokens.

    The buffer grows (one copy) only when a write would overflow it: one sized for the prompt plus
    `spare` never grows while `spare` tokens are decoded. `keys` and `values` stay the source of
    truth: an inherited method that replaces them (crop, reorder, repeat) is picked up by the next
    `update`, which copies whatever it finds into a new buffer.
    """

    def __init__(self, spare: int = 0):
        super().__init__()
        self.spare = spare
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def _views_buffer(self) -> bool:
        """Whether `keys` is still the buffer's leading slice. Compared by storage, not `_base`:
        views made under torch.inference_mode (as decoding runs) have no `_base`."""
        keys, buffer = self.keys, self.key_buffer
        return (buffer is not None and keys.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
                and keys.storage_offset() == 0 and keys.shape[:2] == buffer.shape[:2]
                and keys.stride() == buffer.stride())

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        if not self._views_buffer() or length + new > self.key_buffer.shape[-2]:
            shape = (*key_states.shape[:2], length + new + self.spare, key_states.shape[-1])
            key_buffer, value_buffer = key_states.new_empty(shape), value_states.new_empty(shape)
            if length:
                key_buffer[:, :, :length] = self.keys
                value_buffer[:, :, :length] = self.values
            self.key_buffer, self.value_buffer = key_buffer, value_buffer
        self.key_buffer[:, :, length : length + new] = key_states
        self.value_buffer[:, :, length : length + new] = value_states
        self.keys = self.key_buffer[:, :, : length + new]
        self.values = self.value_buffer[:, :, : length + new]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the `indices` rows, with the buffer's spare room (one copy, as DynamicLayer makes)."""
        length = self.get_seq_length()
        if not (length and self._views_buffer()):
            return super().batch_select_indices(indices)
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def move_rows(self, holes: torch.Tensor, movers: torch.Tensor, rows: int) -> None:
        """Copy rows `movers` over rows `holes`, then keep the first `rows` (a view: no copy)."""
        length = self.get_seq_length()
        for buffer in (self.key_buffer, self.value_buffer):
            buffer[holes] = buffer[movers]
        self.key_buffer, self.value_buffer = self.key_buffer[:rows], self.value_buffer[:rows]
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]


def drop_rows(cache: DynamicCache, running: torch.Tensor) -> torch.Tensor:
    """Keep the rows of `cache` where `running` is True; return the kept rows' old positions in their
    new order. The kept rows are not kept in order: each finished row among the first ones is
    replaced by a running row from the end, so only those move (`InPlaceLayer.move_rows`); other
    layers select the same order."""
    keep = running.nonzero().squeeze(-1)
    rows = len(keep)
    holes = (~running[:rows]).nonzero().squeeze(-1)
    movers = keep[keep >= rows]  # as many as there are holes
    order = torch.arange(rows, device=running.device)
    order[holes] = movers
    for layer in cache.layers:
        if isinstance(layer, InPlaceLayer) and layer.get_seq_length() and layer._views_buffer():
            layer.move_rows(holes, movers, rows)
        else:
            layer.batch_select_indices(order)
    return order


def can_join(cache: DynamicCache) -> bool:
    """Whether rows can join this cache mid-decoding (`join_rows`): only if every layer keeps every
    token (a sliding-window layer keeps its own window, which a join would have to cut alike)."""
    return all(type(layer) in (DynamicLayer, InPlaceLayer) for layer in cache.layers)


def join_rows(cache: DynamicCache, other: DynamicCache, width: int, trim: int) -> None:
    """Append `other`'s rows to `cache`'s, in one copy: both sides' tokens right-aligned in `width`
    slots (zeros before a shorter side: the caller's attention mask hides them), less the first
    `trim` slots, which no row uses. An InPlaceLayer gets a new buffer with its spare room."""
    for layer, extra in zip(cache.layers, other.layers):
        spare = layer.spare if isinstance(layer, InPlaceLayer) else 0
        joined = []
        for mine, theirs in ((layer.keys, extra.keys), (layer.values, extra.values)):
            out = mine.new_empty(len(mine) + len(theirs), mine.shape[1], width - trim + spare, mine.shape[-1])
            # Zeros where attention reads, not empty memory: it weighs a masked slot by exactly 0, and
            # 0 x NaN is NaN. The spare room is written before it is read.
            out[:, :, : width - trim].zero_()
            for start, states in ((0, mine), (len(mine), theirs)):
                first = width - states.shape[-2] - trim  # where this side's first token lands
                out[start : start + len(states), :, max(first, 0) : width - trim] = states[:, :, max(-first, 0) :]
            joined.append(out)
        if isinstance(layer, InPlaceLayer):
            layer.key_buffer, layer.value_buffer = joined
            layer.keys, layer.values = (buffer[:, :, : width - trim] for buffer in joined)
        else:
            layer.keys, layer.values = joined


def kv_cache(model, spare: int = 0, in_place: bool = True) -> DynamicCache:
    """A DynamicCache for `model` whose full-attention layers are `InPlaceLayer`s with room for
    `spare` more tokens; in_place=False gives transformers' own (the engine before, for benchmarks)."""
    cache = DynamicCache(config=model.config)
    if in_place:
        # Exactly DynamicLayer: sliding-window and other subclasses keep their own update.
        cache.layers = [InPlaceLayer(spare) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
