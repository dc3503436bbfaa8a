"""The GPU memory plan (musicgen.serving.memory): sizes from the real checkpoints' shapes, the slots a card holds, the
sentence when none fits, the plan's sizes against what the scheduler really allocates, the table of docs/deployment.md,
and the bound on request-side work (musicgen.serving.gpu_work)."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import ROOT
from musicgen import GenerationRequest, MusicGen, MusicGenError
from musicgen.serving import memory
from musicgen.serving.gpu_work import RequestWork
from musicgen_dev import gpu_memory

T4 = gpu_memory.CARDS["T4 16 GB"]


@pytest.fixture(scope="module")
def real_rows() -> dict[str, gpu_memory.Row]:
    return {row.checkpoint: row for row in gpu_memory.rows()}


def test_the_real_checkpoints_have_their_published_sizes():
    # facebook/musicgen-medium's bf16 decoder is 3.67 GB; musicgen-melody's decoder has 1.4 B parameters
    # (transformers' checkpoints; the models are built on the meta device from the configurations)
    assert gpu_memory.parameters("facebook/musicgen-medium")["decoder"] * 2 / 1e9 == pytest.approx(3.67, abs=0.01)
    assert gpu_memory.parameters("facebook/musicgen-melody")["decoder"] / 1e9 == pytest.approx(1.4, abs=0.05)
    shapes = memory.ModelShapes.of(gpu_memory.config("facebook/musicgen-melody"))
    # a full 30 s window (1500 frames, 3 delays, the start column) after the chroma and the longest text
    assert (shapes.window_columns, shapes.prefix, shapes.cache_positions) == (1504, 235 + 512, 2304)
    assert memory.ModelShapes.of(gpu_memory.config("facebook/musicgen-large")).cache_positions == 1536


def test_slots_follow_the_cards_memory_and_the_cap(real_rows):
    large, small = real_rows["facebook/musicgen-large"], real_rows["facebook/musicgen-small"]
    # large on a T4: its 8-slot cache alone (12.9 GB) would not fit beside 7.2 GB of weights
    assert 8 * large.per_slot + large.weights > T4
    assert 1 <= large.slots["T4 16 GB"] < large.slots["L4 / A10G 24 GB"] < large.slots["A100 / H100 80 GB"]
    sizes = dict(per_slot=small.per_slot, prefill=small.prefill, per_request_work=small.per_request_work)
    capped = memory.plan(weights=small.weights, free=int(T4), total=int(T4), cap=8, checkpoint="s", card="T4", **sizes)
    assert capped.slots == 8 and capped.request_workers == 2
    # whatever the plan gives fits: weights + slots + headroom within the free memory
    free = int(T4) - gpu_memory.CONTEXT_BYTES
    plan = memory.plan(weights=large.weights, free=free, total=int(T4), cap=99, checkpoint="l", card="T4",
                       per_slot=large.per_slot, prefill=large.prefill, per_request_work=large.per_request_work)
    assert plan.weights + plan.kv_cache + plan.headroom <= free < plan.weights + plan.kv_cache + plan.per_slot + plan.headroom


def test_one_request_side_worker_when_two_leave_no_slot(real_rows):
    row = real_rows["facebook/musicgen-melody"]
    sizes = dict(per_slot=row.per_slot, prefill=row.prefill, per_request_work=row.per_request_work)
    total = 20 * 10**9
    reserve = int(memory.RESERVE_FRACTION * total)
    free = row.weights + row.prefill + reserve + row.per_request_work + row.per_slot  # one slot, one worker
    plan = memory.plan(weights=row.weights, free=free, total=total, cap=8, checkpoint="m", card="c", **sizes)
    assert (plan.slots, plan.request_workers) == (1, 1)


def test_a_card_too_small_is_refused_with_one_sentence_naming_the_checkpoint_card_and_setting(real_rows):
    row = real_rows["facebook/musicgen-large"]
    with pytest.raises(MusicGenError) as err:
        memory.plan(weights=row.weights, free=8 * 10**9, total=8 * 10**9, cap=8, per_slot=row.per_slot,
                    prefill=row.prefill, per_request_work=row.per_request_work,
                    checkpoint="facebook/musicgen-large", card="Tesla P4")
    text = str(err.value)
    assert text.startswith("facebook/musicgen-large does not fit on this GPU (Tesla P4: 8.0 GB free of 8.0 GB)")
    assert "MUSICGEN_MODEL" in text and text.count(". ") == 0 and text.endswith(".")


def test_the_slot_size_is_what_the_scheduler_allocates(checkpoints):
    # a melody model's worst case: a full 30 s window after the longest text the encoder reads
    model = MusicGen.load(checkpoints["melody"], device="cpu", concurrency=2)
    try:
        prompt = "lofi beat with piano " * 30  # about 390 of the 512 tokens the encoder reads: the last bucket
        model.predict(GenerationRequest(prompt=prompt, duration=30, seed=1, temperature=0.0))
        allocated = sum(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size()
                        for c in model.scheduler.caches)
        shapes = memory.ModelShapes.of(model.engine.model.config, model.engine.window_frames)
        assert allocated == 2 * memory.slot_bytes(shapes, 4)
    finally:
        model.release_outputs()


def test_the_documented_table_is_the_one_the_plan_gives():
    assert gpu_memory.table() in (ROOT / "docs" / "deployment.md").read_text()


def test_request_side_work_is_bounded_by_the_plan():
    for workers, inside in ((2, 2), (None, 4)):
        work, barrier = RequestWork(torch.device("cpu"), workers), threading.Barrier(inside, timeout=30)

        def one():
            with work():
                barrier.wait()  # passes only when ``inside`` works run at once

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert work.peak == inside and work.running == 0


def test_the_plan_is_exported_as_metrics(real_rows):
    from http_helpers import free_port
    import urllib.request

    from musicgen.serving import metrics

    row = real_rows["facebook/musicgen-melody"]
    plan = memory.plan(weights=row.weights, free=int(T4) - gpu_memory.CONTEXT_BYTES, total=int(T4), cap=8,
                       per_slot=row.per_slot, prefill=row.prefill, per_request_work=row.per_request_work,
                       checkpoint="facebook/musicgen-melody", card="T4")
    port = free_port()
    metrics.serve(port, plan.slots, plan, host="127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("musicgen_")}
    assert values["musicgen_slots"] == plan.slots and values["musicgen_request_workers"] == plan.request_workers
    assert values['musicgen_memory_bytes{part="kv_cache"}'] == plan.slots * row.per_slot
    assert values['musicgen_memory_bytes{part="weights"}'] == row.weights
    assert values['musicgen_memory_bytes{part="headroom"}'] == plan.headroom
