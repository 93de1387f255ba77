"""Incremental detokenisation with stop strings, and a job's events, with the real SmolLM2 tokenizer."""

from __future__ import annotations

from lit_swift.rollout.engine import SamplingParams
from lit_swift.serve.batcher import Job, TextState


def stream(tokenizer, text: str, stop: tuple[str, ...]) -> tuple[list[str], TextState]:
    state = TextState(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), stop)
    deltas = [state.push(t) for t in tokenizer(text, add_special_tokens=False).input_ids]
    return [*deltas, state.push(None)], state


def test_text_is_released_without_any_part_of_a_stop_string(smollm2_tokenizer):
    deltas, state = stream(smollm2_tokenizer, "Red, green and blue. END of list", ("END",))
    assert "".join(deltas) == "Red, green and blue. " and state.stopped
    deltas, state = stream(smollm2_tokenizer, "It ends with EN", ("END",))
    assert "".join(deltas) == "It ends with EN" and not state.stopped  # held back, then released at the end
    assert deltas[-1] == "EN"


def test_job_stops_on_length_and_flushes_held_text(smollm2_tokenizer):
    ids = smollm2_tokenizer("one two EN", add_special_tokens=False).input_ids
    events = []
    job = Job(
        ids[:1], 0, SamplingParams(max_new_tokens=len(ids), stop_token_ids=(2,)),
        TextState(smollm2_tokenizer.decode, ("END",)), events.append,
    )  # fmt: skip
    assert [job.on_token(t) for t in ids] == [False] * (len(ids) - 1) + [True]
    job.finish("length")
    assert "".join(v for k, v in events if k == "token") == "one two EN"
    assert events[-1] == ("done", "length")
