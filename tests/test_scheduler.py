"""The scheduler (continuous batching) through the library: many requests decoded together give exactly the
codes each gives alone, in fp32 and in the CPU default (int8), whenever they join; cancellation frees a slot."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import tone
from musicgen.engine import Engine, WindowSettings
from musicgen.loading import load
from musicgen.sampling import SamplingParams
from musicgen.scheduler import Cancelled, Scheduler


def _requests(engine):
    melody = torch.from_numpy(tone([262.0, 392.0], 2.0)) if engine.is_melody else None
    prompt = torch.randint(0, 2048, (engine.num_codebooks, 40), generator=torch.Generator().manual_seed(9))
    return [  # (text, seconds, params, seed, melody, prompt codes)
        ("lofi beat", 3, SamplingParams(top_k=50), 1, None, None),  # three windows
        ("a longer description of a jazz trio", 1, SamplingParams(top_p=0.9, cfg_scale=1.0), 2, None, None),
        (None, 2, SamplingParams(temperature=0.6), 3, melody, None),
        ("rock", 1, SamplingParams(top_k=0, cfg_scale=5.0), 4, None, prompt),
    ]


def _sequence(engine, request):
    text, seconds, params, seed, melody, prompt = request
    from musicgen.sequence import Sequence

    melody_source = engine.melody_source(melody) if melody is not None else None
    return Sequence(engine, engine.conditioner.encode_text(text), seconds * engine.frame_rate, params,
                    torch.Generator().manual_seed(seed), prompt, melody_source)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("kind", ["plain", "melody"])
def test_requests_decoded_together_give_exactly_their_codes_alone(checkpoints, kind, precision):
    model, tokenizer = load(checkpoints[kind], torch.device("cpu"))
    engine = Engine(model, tokenizer, WindowSettings(window_s=1.0, stride_s=0.6), precision=precision)
    scheduler = Scheduler(engine, 4)
    try:
        requests = _requests(engine)
        alone = [scheduler.run(_sequence(engine, r)) for r in requests]
        together = [None] * len(requests)

        def run(i, delay):
            time.sleep(delay)  # the later ones join while the first is mid-window
            together[i] = scheduler.run(_sequence(engine, requests[i]))

        threads = [threading.Thread(target=run, args=(i, 0.02 * i)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(torch.equal(a, b) for a, b in zip(alone, together))
        assert all(a.shape[1] == r[1] * 50 + (0 if r[5] is None else 40) for a, r in zip(alone, requests))
    finally:
        scheduler.close()


def test_a_cancelled_request_leaves_at_once_and_the_others_finish(checkpoints):
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    engine = Engine(model, tokenizer, precision="int8")
    scheduler = Scheduler(engine, 2)
    try:
        requests = _requests(engine)
        expected = scheduler.run(_sequence(engine, requests[0]))
        endless = _sequence(engine, ("endless", 300, SamplingParams(), 5, None, None))
        job = scheduler.submit(endless)
        cancel = threading.Event()
        errors = []

        def wait():
            try:
                job.wait(cancel)
            except Cancelled as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        other = scheduler.submit(_sequence(engine, requests[0]))
        time.sleep(0.3)
        cancel.set()
        waiter.join(timeout=30)
        assert errors and not waiter.is_alive()
        assert torch.equal(other.wait(), expected)
        assert 0 < endless.steps < endless.total_steps // 10  # it stopped long before its end
        assert scheduler.active == [None, None] and not scheduler.waiting
    finally:
        scheduler.close()


def test_a_backend_that_cannot_batch_serves_requests_one_after_another(checkpoints):
    """transformers' modules (and the CUDA-graph step) decode one request at a time through the same loop."""
    model, tokenizer = load(checkpoints["plain"], torch.device("cpu"))
    engine = Engine(model, tokenizer, backend="reference")
    scheduler = Scheduler(engine, 4)
    try:
        assert not scheduler.batching and scheduler.slots == 1
        requests = _requests(engine)[:2]
        alone = [engine.run(_sequence(engine, r)) for r in requests]
        jobs = [scheduler.submit(_sequence(engine, r)) for r in requests]
        assert all(torch.equal(job.wait(), a) for job, a in zip(jobs, alone))
        endless = scheduler.submit(_sequence(engine, ("endless", 300, SamplingParams(), 5, None, None)))
        endless.cancel()
        with pytest.raises(Cancelled):
            endless.wait()
    finally:
        scheduler.close()
