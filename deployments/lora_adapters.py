"""LoRA adapters inside a generator replica: loading them into the pipeline's experts with
diffusers' ``load_lora_weights``, turning them on per job (``set_adapters``) and off after it,
and removing them when Ray Serve's multiplexing LRU evicts them.

A job's adapters are one multiplexed "model": its id is ``adapter_set_id`` of the names, so
Ray Serve routes the job to a replica that already has that set loaded.
"""

from __future__ import annotations

import logging
import threading

from model_store.adapters import AdapterInfo
from model_store.weights_manifest import check_before_load

logger = logging.getLogger("ray.serve")


def adapter_set_id(names: list[str]) -> str:
    """The multiplexed model id of a set of adapters: their sorted names joined by '+' ('' for none)."""
    return "+".join(sorted(set(names)))


class AdapterRegistry:
    """Adapters loaded into one pipeline, counted by the loaded sets that use them.

    Thread-safe: sets are loaded and evicted from Serve's event loop and executor threads.
    """

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self._users: dict[str, int] = {}
        self._components: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> list[str]:
        """Names of the adapters now in the pipeline, sorted."""
        with self._lock:
            return sorted(self._users)

    def acquire(self, info: AdapterInfo) -> None:
        """Load ``info`` into its experts unless it already is; count one more user.

        Raises:
            WeightsCorrupt: a file differs from the adapter's manifest (checked before loading).
        """
        with self._lock:
            if info.name not in self._users:
                check_before_load(
                    info.folder, f"LoRA adapter {info.name}", "replace the adapter folder with a good copy"
                )
                for component, path in info.files.items():
                    self.pipe.load_lora_weights(
                        str(path.parent),
                        weight_name=path.name,
                        adapter_name=info.name,
                        load_into_transformer_2=component == "transformer_2",
                    )
                self._components[info.name] = list(info.files)
                self._users[info.name] = 0
                logger.info("LoRA adapter %s loaded into %s", info.name, ", ".join(info.files))
            self._users[info.name] += 1

    def release(self, name: str) -> None:
        """One user fewer; the adapter leaves the pipeline when none is left."""
        with self._lock:
            if name not in self._users:
                return
            self._users[name] -= 1
            if self._users[name] > 0:
                return
            del self._users[name]
            for component in self._components.pop(name):
                getattr(self.pipe, component).delete_adapters(name)
            logger.info("LoRA adapter %s unloaded", name)

    def activate(self, scales: dict[str, float]) -> None:
        """Use exactly the adapters in ``scales`` (name -> scale) for the next job, on each expert
        that has them; every other adapter is off. An empty dict turns LoRA off."""
        with self._lock:
            for component in ("transformer", "transformer_2"):
                module = getattr(self.pipe, component, None)
                if module is None or not getattr(module, "_hf_peft_config_loaded", False):
                    continue
                names = [n for n in scales if component in self._components.get(n, [])]
                if names:
                    module.set_adapters(names, weights=[scales[n] for n in names])
                    module.enable_lora()
                else:
                    module.disable_lora()


class LoadedAdapterSet:
    """A multiplexed model: a set of adapters held in the pipeline while Serve's LRU keeps it.

    Serve calls ``__del__`` when it evicts the set (ray.serve.multiplex), which releases them.
    """

    def __init__(self, registry: AdapterRegistry, infos: list[AdapterInfo]) -> None:
        self.registry = registry
        self.names = [i.name for i in infos]
        acquired = []
        try:
            for info in infos:
                registry.acquire(info)
                acquired.append(info.name)
        except BaseException:
            for name in acquired:
                registry.release(name)
            raise
        self._released = False

    def __del__(self) -> None:
        if not getattr(self, "_released", True):
            self._released = True
            try:
                for name in self.names:
                    self.registry.release(name)
            except ImportError:  # the interpreter is shutting down: the pipeline goes with it
                pass
