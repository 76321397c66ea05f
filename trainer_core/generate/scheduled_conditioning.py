"""Conditioning that follows A1111 prompt editing during sampling.

A prompt such as `1girl, [blonde hair:blue hair:0.5]` is encoded once per distinct text of its schedule (not once
per step), and the denoising loop swaps the text embeddings at the model calls where the schedule moves on, as
A1111 does. The negative prompt has its own schedule. A prompt without editing is one entry: nothing is swapped and
the result is bit-identical to plain conditioning.
"""

from __future__ import annotations

from typing import Any

from .conditioning import Conditioning, encode_pair
from .prompt import strip_extra_networks
from .prompt_schedule import active_entry, prompt_schedule
from .samplers import SAMPLERS


def schedule_steps(sampler: str, steps: int) -> int:
    """The step count A1111 schedules prompt edits over: doubled for samplers with two model calls per step."""
    spec = SAMPLERS.get(sampler)
    return steps * 2 if spec is not None and spec.second_order else steps


class ScheduledConditioning:
    """(cond, uncond) embeddings per model call of one pass.

    `steps` is the pass's schedule length (see `schedule_steps`); for the hires pass `first_pass_steps` is the first
    pass's, so fractions above 1 and step numbers past the first pass address the hires pass (A1111's rule).
    """

    def __init__(
        self,
        prompt: str,
        negative: str,
        components: Any,
        emphasis: str,
        comma_backtrack: int,
        steps: int,
        first_pass_steps: int | None = None,
    ) -> None:
        # `<lora:...>` tags go first, as in A1111: their `:` would otherwise read as editing syntax.
        prompt, _ = strip_extra_networks(prompt)
        negative, _ = strip_extra_networks(negative)
        if first_pass_steps is None:
            self.cond = prompt_schedule(prompt, steps)
            self.uncond = prompt_schedule(negative, steps)
        else:
            self.cond = prompt_schedule(prompt, first_pass_steps, steps)
            self.uncond = prompt_schedule(negative, first_pass_steps, steps)
        self._components = components
        self._emphasis = emphasis
        self._comma_backtrack = comma_backtrack
        self._encoded: dict[tuple[int, int], tuple[Conditioning, Conditioning]] = {}

    @property
    def changes(self) -> bool:
        return len(self.cond) > 1 or len(self.uncond) > 1

    def key(self, call_index: int) -> tuple[int, int]:
        """Which (cond, uncond) schedule entries model call `call_index` (0-based in this pass) uses."""
        return active_entry(self.cond, call_index), active_entry(self.uncond, call_index)

    def pair(self, call_index: int) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) for a model call, encoded on first use with equal chunk counts."""
        key = self.key(call_index)
        if key not in self._encoded:
            self._encoded[key] = encode_pair(
                self.cond[key[0]][1],
                self.uncond[key[1]][1],
                self._components,
                self._emphasis,
                self._comma_backtrack,
            )
        return self._encoded[key]

    def pipeline_embeds(self, call_index: int, device: Any, dtype: Any) -> dict[str, Any]:
        """The four embedding arguments of the diffusers SDXL pipelines for a model call."""
        cond, uncond = self.pair(call_index)
        return {
            "prompt_embeds": cond.embeds.to(device, dtype),
            "pooled_prompt_embeds": cond.pooled.to(device, dtype),
            "negative_prompt_embeds": uncond.embeds.to(device, dtype),
            "negative_pooled_prompt_embeds": uncond.pooled.to(device, dtype),
        }

    def loop_update(
        self, call_index: int, batch: int, guided: bool, device: Any, dtype: Any
    ) -> dict[str, Any]:
        """What a diffusers step-end callback returns so that model call `call_index` uses its own text: the
        loop's `prompt_embeds` / `add_text_embeds`, which the pipeline holds as [uncond, cond] when guided.
        Empty when the texts do not change at that call."""
        if call_index == 0 or self.key(call_index) == self.key(call_index - 1):
            return {}
        import torch

        e = self.pipeline_embeds(call_index, device, dtype)
        embeds = e["prompt_embeds"].repeat(batch, 1, 1)
        pooled = e["pooled_prompt_embeds"].repeat(batch, 1)
        if guided:
            embeds = torch.cat([e["negative_prompt_embeds"].repeat(batch, 1, 1), embeds])
            pooled = torch.cat([e["negative_pooled_prompt_embeds"].repeat(batch, 1), pooled])
        return {"prompt_embeds": embeds, "add_text_embeds": pooled}
