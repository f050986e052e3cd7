"""Pin a training step's memory in your own test suite, with memprof installed.

- `@pytest.mark.limit_torch_memory(LIMIT)` measures the test: on CUDA the allocator's peak, on the
  CPU memprof's exact live-tensor tracker (what the test makes plus what its fixtures hand it).
- `memprof.testing.assert_fits` needs no GPU and no download: it plans the step on fake tensors and
  fails with plan's breakdown when the step does not fit the card.
"""

import pytest
import torch

from memprof.testing import assert_fits


@pytest.fixture
def model():
    torch.manual_seed(0)  # 8.4 M parameters: 32 MiB of float32 weights
    return torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024))


@pytest.mark.limit_torch_memory("192 MiB")
def test_training_step_stays_within_its_budget(model):
    optimizer = torch.optim.AdamW(model.parameters())  # two float32 states per weight
    loss = model(torch.randn(64, 1024)).square().mean()
    loss.backward()
    optimizer.step()


def test_qlora_of_llama_8b_fits_a_24_gb_card_at_2048_tokens():
    assert_fits("RTX 4090", "meta-llama/Llama-3.1-8B", task="qlora", seq=2048, grad_checkpointing=True)
