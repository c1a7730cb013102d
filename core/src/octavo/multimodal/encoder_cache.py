"""The runner's side of the vision encoder: run it on the images a step must encode, keep
each output until the chunk that computes the image's last placeholder token, and put the
outputs on their placeholder rows of the step's input embeddings.

What to encode is the scheduler's decision (`ScheduledRequest.encode`,
octavo.multimodal.encoder_budget); both sides drop an image's output by the same rule, and
a preempted or finished request's outputs all at once.

M-RoPE models (Qwen2-VL) also get each token's 3-D position here: a request's prompt
positions are computed once, from its tokens and images, as the model class defines them.
A step without image tokens needs no 3-D positions: a text token sits at the same position
on the three axes, so the plain 1-D rotary at that position is the same rotation, and the
step runs as any other (decode graphs included) with the batch's positions moved there.
"""

from __future__ import annotations

import dataclasses

import torch


class EncoderCache:
    def __init__(self, model) -> None:
        self.model = model
        self.outputs: dict[str, dict[int, torch.Tensor]] = {}
        self.uses_mrope = hasattr(model, "mrope_positions")
        self._mrope: dict[str, tuple[torch.Tensor, int]] = {}  # request id -> ([3, prompt], delta)

    def forget(self, request_id: str) -> None:
        self.outputs.pop(request_id, None)
        self._mrope.pop(request_id, None)

    def step_inputs(self, out, batch):
        """(batch, the model's extra inputs or None): where a chunk computes image tokens,
        their input embeddings, and on an M-RoPE model their 3-D positions; without image
        tokens, a batch whose 1-D positions are the M-RoPE ones (module doc) and no extras."""
        for rid in out.preempted_ids:
            self.outputs.pop(rid, None)
        images = any(_touches_images(s) for s in out.scheduled)
        extra = {}
        if images:
            self._encode(out)
            extra["inputs_embeds"] = self._embeddings(out, batch)
        if self.uses_mrope and any(s.mm_items for s in out.scheduled):
            positions = self._mrope_positions(out, batch)
            if images:
                extra["mrope_positions"] = positions
            else:  # text tokens only: equal on the three axes
                batch = dataclasses.replace(batch, positions=positions[0])
        return batch, extra or None

    def _encode(self, out) -> None:
        todo = [(s.request_id, i, s.mm_items[i]) for s in out.scheduled for i in s.encode]
        # images given as embeddings are the encoder's output already: only the others run it
        pictures = [item for _, _, item in todo if "image_embeds" not in item.data]
        encoded = iter(self.model.encode_images(pictures) if pictures else ())
        for rid, i, item in todo:
            result = item.data["image_embeds"] if "image_embeds" in item.data else next(encoded)
            if result.shape[0] != item.length:
                raise RuntimeError(
                    f"image {i} of request {rid}: the encoder gave {result.shape[0]} embeddings for "
                    f"{item.length} placeholder tokens"
                )
            self.outputs.setdefault(rid, {})[i] = result

    def _embeddings(self, out, batch) -> torch.Tensor:
        embeds = self.model.embed(batch.input_ids)
        rows: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        qsl = batch.query_start_loc_cpu
        for k, s in enumerate(out.scheduled):
            start, end = s.start_pos, s.start_pos + len(s.token_ids)
            kept = self.outputs.get(s.request_id, {})
            for i, item in enumerate(s.mm_items):
                lo, hi = max(item.offset, start), min(item.end, end)
                if lo >= hi:
                    continue
                values.append(kept[i][lo - item.offset : hi - item.offset])
                rows.append(torch.arange(qsl[k] + lo - start, qsl[k] + hi - start))
                if item.end <= end:  # its last placeholder token is computed in this step
                    del kept[i]
            if not kept:
                self.outputs.pop(s.request_id, None)
        if rows:
            embeds.index_copy_(0, torch.cat(rows).to(embeds.device), torch.cat(values).to(embeds.dtype))
        return embeds

    def _mrope_positions(self, out, batch) -> torch.Tensor:
        """[3, T]: the prompt's 3-D positions, and p + delta on all three axes for a token past it."""
        parts = []
        for s in out.scheduled:
            start, n = s.start_pos, len(s.token_ids)
            if not s.mm_items:  # text only: the three axes are the 1-D position
                parts.append(torch.arange(start, start + n).expand(3, n))
                continue
            if s.request_id not in self._mrope:
                prompt = s.all_token_ids[: s.num_prompt_tokens]
                self._mrope[s.request_id] = self.model.mrope_positions(prompt, s.mm_items, self.model.config)
            table, delta = self._mrope[s.request_id]
            end, prompt = start + n, table.shape[1]
            inside = table[:, start : min(end, prompt)]
            past = torch.arange(max(start, prompt), max(end, prompt)) + delta
            parts.append(torch.cat([inside, past.expand(3, -1)], dim=1))
        positions = torch.cat(parts, dim=1)
        pad = batch.input_ids.shape[0] - positions.shape[1]  # static-shape padding tokens: position 0
        if pad:
            positions = torch.cat([positions, positions.new_zeros(3, pad)], dim=1)
        return positions.to(batch.input_ids.device)


def _touches_images(s) -> bool:
    """Whether a scheduled chunk computes placeholder tokens of its request's images."""
    start, end = s.start_pos, s.start_pos + len(s.token_ids)
    return any(item.offset < end and start < item.end for item in s.mm_items)
