"""Devices and processes: the mesh, replication, global batches, distributed start-up.

One process: arrays go to the mesh with ``jax.device_put``. Several processes
(``jax.distributed``): each holds an identical copy of the replicated values and its own
rows of every batch, from which global arrays are assembled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from experiments.configs import Config, num_devices

__all__ = ["make_mesh", "replicate", "global_batch", "from_host", "primary",
           "initialize_distributed", "batch_sharding"]


def make_mesh(config: Config) -> jax.sharding.Mesh:
    """A one-axis (``"data"``) mesh over the devices the run uses."""
    return jax.sharding.Mesh(np.array(jax.devices()[:num_devices(config)]), ("data",))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Batches split along their first axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicate(tree, mesh: jax.sharding.Mesh):
    """``tree`` replicated over ``mesh`` (with several processes, from each process's own
    identical copy; arrays that are already global are kept)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl),
                           out_shardings=sharding)(one(jax.random.key_data(x)))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def global_batch(local: dict, sharding: NamedSharding) -> dict:
    """A batch sharded over the mesh from this process's rows (all of them in one process)."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def from_host(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds whole."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def primary() -> bool:
    """Whether this is the process that writes a run's files (process 0)."""
    return jax.process_index() == 0


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           heartbeat_timeout: int = 60) -> None:
    """``jax.distributed.initialize`` for a run of several processes; values left ``None``
    come from the cluster environment. On CPUs the collectives run over gloo (TCP)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout)
