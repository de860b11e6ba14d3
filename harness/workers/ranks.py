"""Multi-card (DataParallel) layout, framework-free: shards, ports, and each rank's environment.

The coordinator makes every global batch once and shards it the way paddle's
DistributedBatchSampler does without shuffling: rank r of N gets the contiguous rows
[r * B/N, (r + 1) * B/N). torch rank r and paddle rank r receive identical shards.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from harness.errors import UsageError
from harness.workers.protocol import shard_rows


@dataclass(frozen=True)
class Layout:
    nprocs: int = 1  # ranks per framework on this machine
    devices: tuple = ()  # GPU ids; empty: CPU
    placement: str = "shared"  # shared: both frameworks on the same cards; split: each on its own half
    backend: str = "auto"  # auto: nccl on GPU, gloo on CPU
    nnodes: int = 1
    node_rank: int = 0
    master: str | None = None  # ADDR:PORT of the torch rendezvous across nodes; None: this machine
    ips: tuple = ()  # every node's address, in node-rank order (paddle's endpoints), across nodes

    @property
    def global_rank0(self) -> int:
        return self.node_rank * self.nprocs

    @property
    def world(self) -> int:
        return self.nnodes * self.nprocs

    def comm_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.devices else "gloo"

    def device_of(self, framework: str, local_rank: int) -> str | None:
        """The card a rank sees (as its only CUDA device), or None on CPU."""
        if not self.devices:
            return None
        cards = list(self.devices)
        if self.placement == "split":
            half = max(1, len(cards) // 2)
            cards = cards[:half] if framework == "torch" else cards[half:] or cards[:half]
        return str(cards[local_rank % len(cards)])


def validate(layout: Layout, batch_rows: int | None = None) -> None:
    if layout.nprocs < 1:
        raise UsageError(f"--nprocs must be >= 1, got {layout.nprocs}")
    if layout.placement not in ("shared", "split"):
        raise UsageError(f"--placement: expected shared or split, got '{layout.placement}'")
    if layout.placement == "split" and len(layout.devices) < 2:
        raise UsageError("--placement split needs at least two --devices")
    if layout.backend == "nccl" and not layout.devices:
        raise UsageError("backend nccl needs GPUs: give --devices")
    if layout.comm_backend() == "nccl" and layout.nprocs > 1:
        for framework in ("torch", "paddle"):
            cards = {layout.device_of(framework, r) for r in range(layout.nprocs)}
            if len(cards) < layout.nprocs:  # NCCL refuses two ranks of one group on one card
                raise UsageError(f"--nprocs {layout.nprocs} with --placement {layout.placement} puts two {framework} "
                                 f"ranks on one card ({framework} has {len(cards)} of --devices "
                                 f"{','.join(map(str, layout.devices))}); nccl needs one card per rank")
    if not 0 <= layout.node_rank < layout.nnodes:
        raise UsageError(f"--node-rank {layout.node_rank} is not in [0, {layout.nnodes})")
    if layout.nnodes > 1 and (not layout.master or ":" not in layout.master or not layout.master.rsplit(":", 1)[1].isdigit()):
        raise UsageError("--nnodes > 1 needs --master ADDR:PORT (the same on every node)")
    if layout.nnodes > 1 and len(layout.ips) != layout.nnodes:
        raise UsageError(f"--nnodes {layout.nnodes} needs --ips with {layout.nnodes} addresses, in node-rank order "
                         "(paddle's rank endpoints, as paddle.distributed.launch --ips)")
    if batch_rows is not None and batch_rows % layout.nprocs:
        raise UsageError(f"a batch of {batch_rows} rows does not split evenly over {layout.nprocs} ranks")


def shard(batch: dict, rank: int, nprocs: int) -> dict:
    try:
        return shard_rows(batch, rank, nprocs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def free_ports(n: int) -> list:
    """Ports the OS calls free now, chosen by binding to port 0 (never a fixed number)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def device_env(framework: str, local_rank: int, layout: Layout) -> dict:
    """The one card a worker may see (--devices), also for a single-process run."""
    card = layout.device_of(framework, local_rank)
    return {} if card is None else {"CUDA_VISIBLE_DEVICES": card}


def rank_env(framework: str, local_rank: int, layout: Layout, ports: list) -> dict:
    """Environment of one rank, set before its framework is imported.

    One machine: torch's rendezvous on ports[0], paddle's ranks on ports[1:]. Across machines
    (--nnodes): torch's on --master, paddle's rank g of node n on ips[n]:(master port + 1 + g),
    the same list on every node, as `paddle.distributed.launch --ips` would give them.
    """
    rank = layout.node_rank * layout.nprocs + local_rank
    env = {"REPROD_COMM_BACKEND": layout.comm_backend(), **device_env(framework, local_rank, layout)}
    card = layout.device_of(framework, local_rank)
    if layout.nnodes > 1:
        host, port = layout.master.rsplit(":", 1)
        endpoints = [f"{layout.ips[n]}:{int(port) + 1 + n * layout.nprocs + r}"
                     for n in range(layout.nnodes) for r in range(layout.nprocs)]
    else:
        host, port = "127.0.0.1", str(ports[0])
        endpoints = [f"127.0.0.1:{p}" for p in ports[1:1 + layout.world]]
    if framework == "torch":
        env.update(MASTER_ADDR=host, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(layout.world),
                   LOCAL_RANK=str(local_rank))
    else:
        env.update(
            PADDLE_TRAINER_ID=str(rank), PADDLE_TRAINERS_NUM=str(layout.world),
            PADDLE_TRAINER_ENDPOINTS=",".join(endpoints), PADDLE_CURRENT_ENDPOINT=endpoints[rank],
            PADDLE_RANK_IN_NODE=str(local_rank), PADDLE_LOCAL_SIZE=str(layout.nprocs),
            PADDLE_MASTER=endpoints[0], PADDLE_DISTRI_BACKEND=layout.comm_backend(),
        )
        if card is not None:
            env["FLAGS_selected_gpus"] = "0"  # the one card CUDA_VISIBLE_DEVICES leaves visible
    return env
