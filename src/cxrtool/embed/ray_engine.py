"""The Ray engine: an embed run as a Ray Data job, with the same shards and exactly-once writes.

``cxrtool embed SOURCE --engine ray [--ray-address ADDRESS]`` keeps the run's shape (reader ->
decode -> encode -> the one shard writer) and moves the two heavy stages onto a Ray cluster:

- **decode** runs in CPU tasks (``map_batches`` with a function; ``--workers`` of them at once, or
  Ray's autoscaling), each item read, hashed, header-checked and decoded by the run's own picklable
  :class:`~cxrtool.embed.mapper.ImageDecoder`;
- **encode** runs in an actor pool (``map_batches`` with a callable class, ``--ray-actors`` actors,
  ``--gpus-per-worker`` GPUs each): the model is loaded once per actor (from its directory or hub
  name on that node, or from the object store for a model built in memory) and torch's threads are
  set explicitly per actor (Ray sets ``OMP_NUM_THREADS=1`` in workers).

**Exactly once.** The driver holds the workspace's embed lock and is the only writer: actors return
vectors, and the driver writes every shard with the local engine's writer, schema, naming and id
rule. Ray retries failed tasks and restarts killed actors (at least once); the driver keeps the
first result for each item (its archive-relative path) and drops any repeat, so a retried block
never duplicates a row, and a run killed outright resumes from the shards as a local run does.

**What never travels through Ray.** No ``runtime_env`` is set. The pseudonym key and DICOMweb
credentials are read from each node's own environment (``$CXRTOOL_PSEUDONYM_KEY`` or the node's
installation key; ``$CXRTOOL_DICOMWEB_*``), never sent as task arguments, which the dashboard shows;
the driver sends only a keyed check value and each decode task refuses to run on a node whose key
gives another (patient keys would not match). The archive must be readable at the same path on
every node (a shared filesystem); DICOMweb sources need only the network.

``ray`` is an optional extra (``pip install 'cxrtool[ray]'``): this module imports it only inside
:class:`RayDistributor`'s methods, and nothing else in cxrtool imports this module unless
``--engine ray`` is asked for.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from cxrtool.errors import CxrError

KEY_CHECK_TEXT = "cxrtool-ray-key-check"  # hashed with the key; the hash, never the key, is sent


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CxrError("--engine ray needs Ray, which is not installed",
                       "pip install 'cxrtool[ray]' (Ray Data), or use the local engine") from None
    return ray


def key_check(key: str) -> str:
    from cxrtool.privacy import pseudonym

    return pseudonym(KEY_CHECK_TEXT, key)


def _decode_batch(batch: dict[str, np.ndarray], decoder: Any, key_expected: str,
                  shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """A decode task: work items -> pixels + the row as JSON + the error as JSON (or "")."""
    from cxrtool.privacy import resolve_key

    key = resolve_key(None)  # this node's own key ($CXRTOOL_PSEUDONYM_KEY or its installation key)
    if key_check(key) != key_expected:
        raise CxrError("this Ray node's pseudonym key differs from the driver's",
                       "set the same CXRTOOL_PSEUDONYM_KEY on every node (patient keys must match)")
    decoder.pseudonym_key = key
    pixels, records, errors = [], [], []
    for item in batch["item"]:
        x, record, err = decoder(item)
        pixels.append(np.zeros(shape, np.float32) if x is None else x.numpy())
        records.append(json.dumps(record, default=str))
        errors.append(json.dumps(list(err)) if err else "")
    return {"rel": batch["rel"], "pixels": np.stack(pixels), "record": np.array(records, dtype=object),
            "error": np.array(errors, dtype=object)}


class _Encoder:
    """An actor of the encode pool: loads the model once, then embeds every batch it is given."""

    def __init__(self, model_ref: str | None, model_object: Any, threads: int | None, device: str,
                 runtime: str = "torch") -> None:
        import torch

        torch.set_num_threads(max(1, threads or os.cpu_count() or 1))
        if model_ref is not None:
            from cxrtool.constants import BUNDLED_MODEL, DEFAULT_MODEL_DIR
            from cxrtool.model.factory import load_model

            self.model = load_model(str(DEFAULT_MODEL_DIR) if model_ref == BUNDLED_MODEL else model_ref, device=device)
        else:
            import ray

            self.model = ray.get(model_object).to(device)
        self.model.eval()
        self.model.use_runtime(runtime if device == "cpu" else "torch")  # decided on this actor's first batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = [i for i, e in enumerate(batch["error"]) if not e]
        dim = self.model.card.output_dim
        vectors = np.zeros((len(batch["rel"]), dim), np.float32)
        if ok:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            vectors[ok] = self.model.encode_pixels(pixels)
        return {"rel": batch["rel"], "vector": vectors, "record": batch["record"], "error": batch["error"]}


class RayDistributor:
    """Decode in Ray tasks and encode in a Ray actor pool; yields ``(vector, row, error)`` batches to
    the driver's runner, which screens duplicates and writes (``encodes = True``: the runner does
    not call the model itself)."""

    encodes = True

    def __init__(self, model: Any, address: str | None = None, workers: int | None = None, actors: int = 1,
                 gpus_per_worker: float = 0.0, threads: int | None = None, device: str = "cpu",
                 key: str = "", runtime: str = "torch") -> None:
        self.model = model
        self.runtime = runtime
        self.address = address
        self.workers = workers or 0
        self.actors = max(1, actors)
        self.gpus = gpus_per_worker
        self.threads = threads  # None: each actor uses its node's CPUs (resolved in the actor)
        self.device = device
        self.key_expected = key_check(key)
        self._key = key  # only to hand a local cluster's workers the driver's key through their environment
        self.started_here = False

    def select(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def _init(self) -> Any:
        ray = require_ray()
        if not ray.is_initialized():
            # No runtime_env, no job metadata: nothing secret is sent to the cluster (module docstring).
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:  # a local cluster on this machine, loopback only; its processes inherit this environment
                from cxrtool.privacy import PSEUDONYM_ENV

                before = os.environ.get(PSEUDONYM_ENV)
                os.environ[PSEUDONYM_ENV] = before or self._key  # for the cluster's processes only
                try:
                    ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
                finally:
                    if before is None:
                        os.environ.pop(PSEUDONYM_ENV, None)
            self.started_here = True
        return ray

    def decoded(self, items: Sequence[Any], decode: Callable[[Any], Any], batch_size: int) -> Iterator[list[Any]]:
        if not items:
            return
        ray = self._init()
        spec = self.model.card.image
        shape = (spec.in_channels, spec.input_size, spec.input_size)
        model_ref = self.model.origin or None
        model_object = None if model_ref else ray.put(self.model.cpu())
        saved_key = getattr(decode, "pseudonym_key", None)
        decode.pseudonym_key = None  # never pickled into a task: each node reads its own
        try:
            blocks = max(1, min(len(items) // max(1, batch_size * 4), 1000))
            ds = ray.data.from_items([{"rel": f.rel, "item": f} for f in items], override_num_blocks=blocks)
            ds = ds.map_batches(_decode_fn(decode, self.key_expected, shape), batch_size=batch_size,
                                batch_format="numpy", num_cpus=1,
                                **({"concurrency": self.workers} if self.workers else {}))
            ds = ds.map_batches(_Encoder, fn_constructor_kwargs={"model_ref": model_ref, "model_object": model_object,
                                                               "threads": self.threads, "device": self.device,
                                                               "runtime": self.runtime},
                                batch_size=batch_size, batch_format="numpy", concurrency=self.actors,
                                num_cpus=1, num_gpus=self.gpus)  # Ray Data restarts a killed actor, retries its batches
            try:
                for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
                    out = []
                    for vector, record, error in zip(batch["vector"], batch["record"], batch["error"], strict=True):
                        err = tuple(json.loads(error)) if error else None
                        out.append((None if err else vector, json.loads(record), err))
                    yield out
            except Exception as exc:  # Ray wraps a task's error: the user's one line is the CxrError inside
                raise _cxr_error_in(exc) or exc from None
        finally:
            decode.pseudonym_key = saved_key
            if self.started_here:
                ray.shutdown()
                self.started_here = False


def _decode_fn(decoder: Any, key_expected: str, shape: tuple[int, ...]) -> Callable:
    """The decode task's function (a closure: Ray pickles it with the decoder, never a key)."""

    def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _decode_batch(batch, decoder, key_expected, shape)

    return decode_batch


def _cxr_error_in(exc: BaseException) -> CxrError | None:
    """The :class:`CxrError` a Ray task raised (a wrong key on a node, the PACS gone), found through
    Ray's wrappers (``cause``, ``__cause__``), so the CLI says it in one line; None if there is none."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CxrError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None
