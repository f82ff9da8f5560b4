"""torch.distributed: combine one recorded step's statistics across ranks (DDP, FSDP2).

Every rank measures its own step on its own device; :meth:`RankSync.combine` then
exchanges the step's scalars in **one** ``all_gather`` (only on recorded steps) and
gives every rank the same combined values, so every rank judges the same findings.
Under DDP a recorded step without activation statistics and with finite gradients
(most steps) skips that blocking exchange, since DDP made the gradients identical on
every rank: only its loss is gathered, asynchronously.  The rules:

* gradient, parameter and update L2 norms: under FSDP2 (DTensor shards) the square
  root of the sum of the ranks' squares, i.e. the whole model's norm; under DDP the
  gradients are already all-reduced (identical on every rank), so the largest value
  (NaN wins) is taken;
* L1 norms: summed over shards, largest otherwise; max |g| the largest, min the smallest;
* the loss and the activation norms and zero/saturation counts: the mean over ranks
  (the per-rank batches are the same size under DDP), so a NaN/Inf on one rank makes the
  combined loss non-finite; a module's non-finite output flag: set when set on any rank;
  silent and dead ReLU units: the smallest count (a unit is dead only when it is silent
  on every rank);
* per-rank flags: which ranks had a non-finite loss or module output, so a finding can
  say "on rank 1".

Combination happens only for models wrapped in ``DistributedDataParallel`` or sharded
with ``fully_shard`` (FSDP2) while a process group of more than one rank is up; every
rank must then watch the model with the same options, because the exchange is a
collective.  Other models are watched per rank, without collectives.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradscope.findings import Finding
from gradscope.report import Report

# How each column combines across ranks, as an index into the stack built in _combine.
_MAX, _MIN, _ROOT_SUM_SQ, _SUM, _MEAN, _ROOT_MEAN_SQ = range(6)

#: Gradient columns (positions are parameters): how shards combine, how replicas combine.
_PARAM_OPS = {
    "grad_l2": (_ROOT_SUM_SQ, _MAX),
    "param_norm": (_ROOT_SUM_SQ, _MAX),
    "update_norm": (_ROOT_SUM_SQ, _MAX),
    "grad_l1": (_SUM, _MAX),
    "grad_max": (_MAX, _MAX),
    "grad_min": (_MIN, _MIN),
    "row_spread": (_MAX, _MAX),
    "row_twins": (_MIN, _MAX),  # a shard holds some rows: copies in every shard count
}
#: Activation columns (positions are modules) and the step's scalars.
_OTHER_OPS = {
    "sum": _MEAN,
    "act_norm": _ROOT_MEAN_SQ,
    "sumsq": _ROOT_MEAN_SQ,  # the recorder moves activation norms in this column
    "nonfinite": _MAX,  # a module's output had a NaN/Inf on some rank
    "input_nonfinite": _MAX,
    "nonfinite_order": _MIN,  # not measured under several ranks (each has its own order)
    "input_rms": _ROOT_MEAN_SQ,  # norms until the recorder divides them (as sumsq)
    "batch_spread": _MEAN,
    "zeros": _MEAN,
    "saturated": _MEAN,
    "silent_units": _MIN,
    "dead_units": _MIN,
    # Each rank's loss term and constant baseline on its own batch: their mean is the
    # global batch's (equal per-rank batches).
    "loss_term": _MEAN,
    "constant_loss": _MEAN,
    "loss_input_fault": _MAX,  # a code: the same on every rank (one loss function)
    "fake_score": _MEAN,
    "scalars": _MEAN,
}


def _is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "_local_tensor")


def local(t: Tensor | None) -> Tensor | None:
    """This rank's shard of a DTensor (no copy, no communication); other tensors unchanged."""
    return t._local_tensor if _is_dtensor(t) else t


def locals_of(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`local` of every tensor in a list."""
    return [local(t) for t in tensors]


def is_distributed_model(model: torch.nn.Module) -> bool:
    """True for a DDP-wrapped model or one with FSDP2 (DTensor) parameters."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return True
    return any(_is_dtensor(p) for p in model.parameters())


class RankSync:
    """Combines each recorded step's device scalars across the ranks of a process group.

    Args:
        sharded: one flag per watched parameter, True when it is a DTensor shard (FSDP2).
        history: the scope's history (a DDP light step's loss is attached to it later).
        group: the process group (default: the world).
    """

    def __init__(self, sharded: list[bool], history: Any = None, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.sharded = list(sharded)
        self.history = history
        self._ops: dict[int, Tensor] = {}
        self._pending: _PendingLoss | None = None
        #: First recorded step at which each key ("loss" or a module index) was non-finite
        #: on some rank, and on which ranks.
        self.first_bad: dict[Any, tuple[int, list[int]]] = {}

    @classmethod
    def for_model(
        cls, model: torch.nn.Module, params: list[Tensor], history: Any = None
    ) -> RankSync | None:
        """A sync for a DDP/FSDP2 model when a process group of more than one rank is up."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size() < 2 or not is_distributed_model(model):
            return None
        return cls([_is_dtensor(p) for p in params], history)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints and renders."""
        return self.rank == 0

    # -- the step --------------------------------------------------------------
    def combine(
        self,
        blocks: list[tuple[list[float], Any, list[Tensor]]],
        columns: dict[str, list[float]],
        step: int,
    ) -> list[float]:
        """Exchange and combine the step's scalars; returns them on the host, in order.

        ``blocks`` are the scope's (target list, positions, device scalars) triples and
        ``columns`` names each target list.  Raises when the ranks measured different
        things (different models or options on different ranks).

        Under DDP a light step (no activation statistics, finite gradients) needs no
        blocking exchange: the gradients are identical on every rank already.  Its loss
        is then taken out of ``blocks`` (the record gets none for now), gathered
        asynchronously, and attached to the history as the ranks' mean once it arrived.
        """
        names = {id(target): name for name, target in columns.items()}
        layout = [(names.get(id(target), "?"), list(pos)) for target, pos, _ in blocks]
        flat = [t.reshape(()) for _, _, values in blocks for t in values]
        history = self.history
        self._settle(history)
        if not flat:
            return []
        if (
            history is not None
            and not any(self.sharded)
            and not _ACT_NAMES & {n for n, _ in layout}
        ):
            values = _light_step(blocks, layout, flat, columns, history, step, self)
            if values is not None:
                return values
        signature = zlib.crc32(repr(layout).encode())
        ops = self._ops.get(signature)
        if ops is None:
            ops = self._ops[signature] = self._op_codes(layout, flat[0].device)
        local_values = torch.stack(flat).to(torch.float64)
        header = torch.tensor([float(len(flat)), float(signature)], dtype=torch.float64)
        mine = torch.cat([header.to(local_values.device), local_values])
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._dist.all_gather(gathered, mine, group=self.group)
        table = torch.stack(gathered)
        host_table = table.tolist()
        if any(row[:2] != host_table[self.rank][:2] for row in host_table):
            raise RuntimeError(
                f"gradscope: the ranks measured different statistics at step {step}; every "
                "rank must watch the same model with the same options (budget= is not "
                "supported under DDP/FSDP2, since each rank would time itself)."
            )
        values = table[:, 2:]
        stacked = torch.stack(
            [
                values.amax(0),
                values.amin(0),
                values.square().sum(0).sqrt(),
                values.sum(0),
                values.mean(0),
                values.square().mean(0).sqrt(),
            ]
        )
        combined = stacked.gather(0, ops.unsqueeze(0)).squeeze(0).tolist()
        self._note_bad_ranks(layout, [row[2:] for row in host_table], step)
        return combined

    def _settle(self, history: Any) -> None:
        """Wait for the previous light step's loss exchange (done by now: the ranks have
        since met in DDP's all-reduce) and let the history read it."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if history is not None and len(history.late_losses) > 32:
                history.settle()  # resolves the late losses, keeping that dict small

    def _gather_loss_async(self, loss: Tensor, history: Any, step: int) -> None:
        """Start gathering this rank's loss; attach the ranks' mean to ``step`` lazily."""
        mine = loss.reshape(1).to(torch.float64)
        outputs = [torch.empty_like(mine) for _ in range(self.world_size)]
        work = self._dist.all_gather(outputs, mine, group=self.group, async_op=True)
        self._pending = _PendingLoss(work, outputs, mine, self, step)
        history.set_loss(step, self._pending)

    def _op_codes(self, layout: list[tuple[str, list[int]]], device: torch.device) -> Tensor:
        codes: list[int] = []
        for name, positions in layout:
            if name in _PARAM_OPS:
                shard_op, replica_op = _PARAM_OPS[name]
                codes += [shard_op if self.sharded[i] else replica_op for i in positions]
            else:
                codes += [_OTHER_OPS.get(name, _MAX)] * len(positions)
        return torch.tensor(codes, dtype=torch.long, device=device)

    def _note_bad_ranks(
        self, layout: list[tuple[str, list[int]]], rows: list[list[float]], step: int
    ) -> None:
        """Remember which ranks first had a non-finite loss or module output."""
        offset = 0
        for name, positions in layout:
            keys: list[Any] = []
            if name == "scalars":
                keys = ["loss" if p == 0 else None for p in positions]
            elif name in ("sum", "nonfinite"):  # a non-finite sum, or a flag above 0
                keys = list(positions)
            for k, key in enumerate(keys):
                if key is None or key in self.first_bad:
                    continue
                bad = [r for r, row in enumerate(rows) if _is_bad(name, row[offset + k])]
                if bad:
                    self.first_bad[key] = (step, bad)
            offset += len(positions)

    def combine_replay(
        self, flags: dict[int, float], n_modules: int, step: int, note: bool = True
    ) -> dict[int, float]:
        """Combine the replayed forward's non-finite flags (module -> 1.0/0.0) of all ranks.

        Called on every rank on the first bad step (the ranks agree it is bad, since the
        record they judge is combined).  Returns module -> 1.0 when any rank's output was
        non-finite, 0.0 when every replaying rank's was finite.  ``note``: remember which
        ranks had a non-finite output, for the finding.
        """
        mine = torch.full((n_modules,), -1.0, dtype=torch.float64)
        for j, flag in flags.items():
            mine[j] = flag
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._dist.all_gather(gathered, mine, group=self.group)
        rows = torch.stack(gathered).tolist()
        out: dict[int, float] = {}
        for j in range(n_modules):
            seen = [row[j] for row in rows]
            if max(seen) < 0:
                continue  # replayed on no rank
            out[j] = 1.0 if max(seen) > 0 else 0.0
            bad = [r for r, v in enumerate(seen) if v > 0]
            if note and bad and j not in self.first_bad:
                self.first_bad[j] = (step, bad)
        return out

    # -- the report -------------------------------------------------------------
    def finish(self, report: Report, module_names: list[str]) -> Report:
        """Name the ranks in non-finite findings; only rank 0 renders (see :class:`RankReport`)."""
        by_name = {name: j for j, name in enumerate(module_names)}
        for finding in report.findings:
            _name_ranks(finding, self.first_bad, by_name, self.world_size)
        fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
        shown = RankReport(**fields, rank=self.rank, world_size=self.world_size)
        shown.notes.append(
            f"combined across {self.world_size} ranks (this is rank {self.rank}); "
            "only rank 0 renders plots and HTML"
        )
        return shown


def _is_bad(column: str, value: float) -> bool:
    return not math.isfinite(value) or (column == "nonfinite" and value > 0)


#: Activation columns: per rank, so a step that measured them is always exchanged.
_ACT_NAMES = {
    "sum",
    "act_norm",
    "sumsq",
    "zeros",
    "saturated",
    "silent_units",
    "dead_units",
    "nonfinite",
    "input_nonfinite",
    "input_rms",
    "batch_spread",
    "time_grad_first",
    "time_grad_last",
    "loss_term",
    "constant_loss",
    "loss_input_fault",
    "fake_score",
}


def _light_step(
    blocks: list[tuple[list[float], Any, list[Tensor]]],
    layout: list[tuple[str, list[int]]],
    flat: list[Tensor],
    columns: dict[str, list[float]],
    history: Any,
    step: int,
    sync: RankSync,
) -> list[float] | None:
    """A DDP step without activation statistics: the gradient values are this rank's own
    (identical on every rank), the loss is gathered asynchronously.  None when a gradient
    is non-finite: every rank sees that alike and then exchanges everything."""
    from gradscope.stats import to_host

    values = to_host(flat)
    offset, loss_at = 0, None
    for k, (name, positions) in enumerate(layout):
        if name == "scalars" and 0 in positions:
            loss_at = (k, offset + positions.index(0))
        elif not all(math.isfinite(v) for v in values[offset : offset + len(positions)]):
            return None
        offset += len(positions)
    if loss_at is None:
        return values
    k, flat_index = loss_at
    target, positions, tensors = blocks[k]
    keep = [i for i, p in enumerate(positions) if p != 0]
    blocks[k] = (target, [positions[i] for i in keep], [tensors[i] for i in keep])
    columns["scalars"][0] = None  # the record's loss: attached later, as the ranks' mean
    sync._gather_loss_async(flat[flat_index], history, step)
    return values[:flat_index] + values[flat_index + 1 :]


class _PendingLoss:
    """The ranks' mean loss of one light step, read (``float()``) once its gather is done."""

    def __init__(
        self, work: Any, outputs: list[Tensor], mine: Tensor, sync: RankSync, step: int
    ) -> None:
        self._work, self._outputs, self._mine, self._value = work, outputs, mine, None
        self._sync, self._step = sync, step

    def wait(self) -> None:
        """Block until the gather is done (at once, one step after it started)."""
        if self._value is None:
            try:
                self._work.wait()
                ranks, rows = None, [o.item() for o in self._outputs]
            except RuntimeError:  # the process group is gone: this rank's own loss
                ranks, rows = [self._sync.rank], [self._mine.item()]
            self._value = sum(rows) / len(rows)
            bad = [r for r, v in enumerate(rows) if not math.isfinite(v)]
            bad = [ranks[r] for r in bad] if ranks else bad
            if bad and "loss" not in self._sync.first_bad:
                self._sync.first_bad["loss"] = (self._step, bad)
            self._work = self._outputs = self._mine = None

    def __float__(self) -> float:
        self.wait()
        return self._value


def _name_ranks(
    finding: Finding, first_bad: dict[Any, tuple[int, list[int]]], by_name: dict, world_size: int
) -> None:
    """Add "on rank N" to a non-finite finding when only some ranks produced the value."""
    if finding.kind != "nonfinite_gradient":
        return
    key: Any = by_name.get(finding.layer) if finding.layer is not None else None
    if key is None and finding.evidence.get("culprit") == "loss":
        key = "loss"
    seen = first_bad.get(key)
    if seen is None or seen[0] != finding.step:
        return
    ranks = seen[1]
    if len(ranks) == world_size:
        return  # every rank: nothing rank-specific to say
    where = "rank " + ", ".join(str(r) for r in ranks)
    finding.evidence["ranks"] = ranks
    finding.message = f"On {where} only (its batch): {finding.message}"


@dataclasses.dataclass
class RankReport(Report):
    """A :class:`Report` that knows its rank: only rank 0 writes plots and HTML."""

    rank: int = 0
    world_size: int = 1

    def plot(self, outdir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
        """As :meth:`Report.plot` on rank 0; other ranks write nothing and return []."""
        if self.rank != 0:
            return []
        return super().plot(outdir, formats)

    def save_html(self, path: str | Path) -> Path:
        """As :meth:`Report.save_html` on rank 0; other ranks write nothing."""
        if self.rank != 0:
            return Path(path)
        return super().save_html(path)
