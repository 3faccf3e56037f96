"""It learns: the authors' recipe (thinker LLM + selector, STE) on a generated audio-visual event task.

Each 2-second clip has a flash and, at the same moment, a 0.4 s noise burst whose band is the
answer ("A" low, "B" high); the rest of the soundtrack is silent. At audio drop 0.8 a chunk keeps
10 of its 50 audio tokens, so a selector that ignores the content keeps ~20% of the ~12 event
tokens, and the LLM mostly hears nothing. Examples are preprocessed by the package (layout,
prompt, labels, pixel patches) and encoded once by `tasks.ContentEncoder` (a stand-in for the
tiny default's random towers, which pass too little of the content: docs/train.md); every step is
`Trainer.step`, the function `train()` runs, in the order `train()` uses. docs/train.md records
the numbers and how they vary with the selector's seed (`python -m benchmarks.train_learning_sweep`).
"""

from __future__ import annotations

import pytest
import torch

from omnisift_edge.model.load import ModelSource, load_model

from .tasks import event_dataset, learning_run


@pytest.fixture
def two_threads():
    """The run is chaotic enough that CPU rounding matters; the recorded numbers used 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_the_selector_learns_to_keep_the_event(capsys, two_threads):
    data = event_dataset(load_model(ModelSource()), 256 + 64)
    result = learning_run(data, selector_seed=5)      # seed 5 starts at chance; docs/train.md has all seeds
    (loss0, event0, audio0), (loss1, event1, audio1) = result["before"], result["after"]
    with capsys.disabled():
        print(f"\nlearning test: 100 steps in {result['seconds']:.1f}s; train loss {result['train_loss'][0]:.3f} -> "
              f"{result['train_loss'][1]:.4f}; held-out loss {loss0:.3f} -> {loss1:.4f}; event tokens kept "
              f"{event0:.1%} -> {event1:.1%}, all audio tokens {audio0:.1%} -> {audio1:.1%}")
    assert loss1 < 0.05 * loss0 and result["train_loss"][1] < 0.1                 # (a) the loss falls
    assert audio1 == pytest.approx(0.2, abs=0.01)                                 # 10 of 50 per chunk
    assert event1 >= 2 * audio1 and event1 >= event0 + 0.2                        # (b) far above chance
