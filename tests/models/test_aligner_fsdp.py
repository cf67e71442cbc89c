"""Aligner under real FSDP2: 2 gloo processes, `fully_shard` per decoder layer then the root.

Checks (against a single-process run of the same steps on the whole batch):
- the shared prefix and the gates train to the same values (grads from every layer reach the
  root-level prefix, and the reduce-scatter sums both ranks' halves);
- saving with the collective path (every rank) and with the rank-0 path (a gathered full state
  dict, as the training engine's checkpoint writer does) gives the same files;
- resume: a new model loads the step-2 adapter from disk, trains steps 3–4 and ends where the
  uninterrupted run ended (plain SGD has no optimizer state, so the adapter is the whole state).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

STEPS, RESUME_AT, LR = 4, 2, 0.5
SPEC = "tiny-random:llama"


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(5, 3000, (4, 10), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # prompt-like positions without loss, so token counts differ from ids
    labels[1, 7:] = -100
    return ids, labels


def _model():
    from rayalign.models.aligner import add_aligner
    from rayalign.models.loader import load_model

    torch.manual_seed(5)  # the prefix initialisation is seeded: same start on every rank
    model = add_aligner(load_model(SPEC, attn_implementation="sdpa"), tokens=2, start_layer=0)
    model.train()
    return model


def _loss_sum(model, ids, labels) -> torch.Tensor:
    """Summed next-token cross-entropy (normalised by the GLOBAL target count by the caller)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )


def _train(model, steps: int, rows: slice, world: int) -> None:
    ids, labels = _batch()
    total = (labels[:, 1:] != -100).sum()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    for _ in range(steps):
        # FSDP2 averages gradients over ranks: scale by world so the update equals the whole batch's
        loss = _loss_sum(model, ids[rows], labels[rows]) * world / total
        loss.backward()
        opt.step()
        opt.zero_grad()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from rayalign.models.aligner import load_aligner, save_aligner
    from rayalign.models.loader import load_model

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows, out_dir = slice(rank * 2, rank * 2 + 2), Path(out)
    try:
        model = _shard(_model())
        _train(model, RESUME_AT, rows, world)
        save_aligner(model, out_dir / "step2")  # collective path: every rank calls it
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:  # the checkpoint writer's path: rank 0 alone, with the gathered state dict
            save_aligner(model, out_dir / "step2-rank0", state_dict=full)
        _train(model, STEPS - RESUME_AT, rows, world)
        save_aligner(model, out_dir / "uninterrupted")
        dist.barrier()

        # resume: a new model object — the frozen base from its spec, the adapter from the step-2 folder
        resumed = load_aligner(load_model(SPEC, attn_implementation="sdpa"), out_dir / "step2")
        resumed.train()
        _train(_shard(resumed), STEPS - RESUME_AT, rows, world)
        save_aligner(resumed, out_dir / "resumed")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _shard(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)  # the root group holds the embeddings, the head and model.aligner
    assert hasattr(model.aligner.prefix, "full_tensor")  # really sharded (a DTensor)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)


@pytest.mark.timeout(240)
def test_fsdp2_training_save_and_resume_match_single_process(tmp_path, tiny_model_path):
    from safetensors.torch import load_file

    from rayalign.models.aligner import aligner_state_dict

    # single-process reference on the whole batch
    ref_model = _model()
    start = aligner_state_dict(ref_model)
    _train(ref_model, RESUME_AT, slice(0, 4), 1)
    ref_step2 = aligner_state_dict(ref_model)
    _train(ref_model, STEPS - RESUME_AT, slice(0, 4), 1)
    ref_final = aligner_state_dict(ref_model)
    assert (ref_final["gate"] - start["gate"]).abs().max() > 1e-3  # training moved the gates off zero
    assert (ref_final["prefix"] - start["prefix"]).abs().max() > 1e-4  # ...and then the shared prefix

    _spawn(tmp_path)

    def weights(name):
        return load_file(str(tmp_path / name / "aligner.safetensors"))

    for key in ("prefix", "gate"):
        torch.testing.assert_close(weights("step2")[key], ref_step2[key], rtol=1e-5, atol=1e-6)
        assert torch.equal(weights("step2-rank0")[key], weights("step2")[key])
        torch.testing.assert_close(weights("uninterrupted")[key], ref_final[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(weights("resumed")[key], weights("uninterrupted")[key], rtol=1e-6, atol=1e-7)
