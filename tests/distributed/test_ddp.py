"""DDP and FSDP2 on two gloo ranks: every rank agrees, norms equal a single process's."""

from __future__ import annotations

import math

import pytest
import torch
import workers

pytestmark = pytest.mark.distributed

torch.set_num_threads(1)


def _close(a: list[list[float]], b: list[list[float]], rel: float = 1e-5) -> bool:
    return all(
        math.isclose(x, y, rel_tol=rel, abs_tol=1e-9)
        for row_a, row_b in zip(a, b, strict=True)
        for x, y in zip(row_a, row_b, strict=True)
    )


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_healthy_run_matches_single_process(tmp_path, mode):
    steps = 12  # 5 warm-up detail steps, light steps, a detail step at 10
    ranks = workers.spawn(workers.train, tmp_path, mode, steps)
    plain = workers.run_plain(workers.mlp(), steps)
    for result in ranks:
        assert result["findings"] == []
        assert _close(result["grad_l2"], plain["grad_l2"])
        # Parameter norms are measured on detail steps (NaN elsewhere, alike in both runs).
        measured = [
            (a, b)
            for ra, rb in zip(result["param_norm"], plain["param_norm"], strict=True)
            for a, b in zip(ra, rb, strict=True)
            if a == a
        ]
        assert measured and all(math.isclose(a, b, rel_tol=1e-5) for a, b in measured)
        assert _close([result["loss"]], [plain["loss"]])
        # A check that cannot run here says so instead of passing silently.
        assert any(note.startswith("whether the loop resets") for note in result["notes"])
    assert ranks[0]["grad_l2"] == ranks[1]["grad_l2"]
    assert ranks[0]["class"] == "RankReport"


@pytest.mark.parametrize(
    ("mode", "bad_from"),
    [("ddp", 0), ("ddp", 7), ("fsdp2", 7)],
    ids=["ddp_detail_step", "ddp_replayed_step", "fsdp2_replayed_step"],
)
def test_nan_on_one_rank_names_rank_and_module(tmp_path, mode, bad_from):
    ranks = workers.spawn(workers.train, tmp_path, mode, 9, bad_from)
    for result in ranks:
        nonfinite = [f for f in result["findings"] if f["kind"] == "nonfinite_gradient"]
        assert len(nonfinite) == 1, result["findings"]
        # The Log module, on rank 1's batch (DDP prefixes its wrapped module's names).
        assert nonfinite[0]["layer"] == ("module.2" if mode == "ddp" else "2")
        assert nonfinite[0]["ranks"] == [1]
        assert nonfinite[0]["message"].startswith("On rank 1 only")
    assert ranks[0]["findings"] == ranks[1]["findings"]
