"""The vLLM engine behind ``--backend vllm``, colocated with the trainer: built in this process
(the way TRL's colocate mode and verl's hybrid engine run it), with the policy's current weights
loaded into it in memory, through the model's own ``load_weights``, before each rollout.

Why in process: the weights then pass by reference (no checkpoint on disk, no copy through a
socket), and vLLM's engine needs no worker process (which would need the caller's ``__main__``
guard). ``engine_environment`` sets the variables that make it so, and on CPU the small defaults
below; a variable the user set is kept.

Sleep mode (``LLM.sleep``/``wake_up``: the weights offloaded and the KV cache freed while the
trainer updates) exists on CUDA only; on CPU the KV cache stays allocated
(``VLLM_CPU_KVCACHE_SPACE`` GiB) and ``sleep``/``wake`` do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from softmax_theory.inputs import MissingExtra

# vLLM's V1 engine runs its core in this process (no worker process): the policy's tensors reach
# the engine's model by reference.
IN_PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# On CPU: a 1 GiB KV cache (vLLM's own default takes a share of the machine's memory), and no
# pinning of OpenMP threads to cores (vLLM's "auto" binds a whole NUMA node, which a machine
# shared with the trainer and other work cannot spare).
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
# On CUDA the engine shares the device with the trainer: the share of its memory vLLM may take.
COLOCATE_GPU_MEMORY = 0.3
# The log-probs vLLM reports: of the distribution it samples from, softmax(z/T) after the
# (neutral) truncations, not of the raw logits (vLLM's default, "raw_logprobs").
LOGPROBS_MODE = "processed_logprobs"


def missing_vllm() -> MissingExtra:
    return MissingExtra(
        "backend: vllm needs vLLM: `make vllm` builds .venv-vllm with it (the CPU build here, "
        "or pip install 'entropy-mechanism[vllm]' on CUDA; docs/rollout.md); or use --backend hf"
    )


def vllm_platform() -> str:
    """The device vLLM's build runs on: ``"cpu"`` for the CPU build, else ``"cuda"`` (or
    another accelerator vLLM names)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        raise missing_vllm() from None
    return str(current_platform.device_type)


def engine_environment(platform: str, threads: int | None = None) -> dict[str, str]:
    """The environment variables ``build_engine`` sets where unset: in process everywhere; on
    CPU the small KV cache, no thread pinning, and ``OMP_NUM_THREADS`` at torch's present thread
    count (``threads``; without it vLLM drops torch to one thread for serving, for the trainer
    too, since both share this process)."""
    env = dict(IN_PROCESS_ENV)
    if platform == "cpu":
        env.update(CPU_ENV)
        env["OMP_NUM_THREADS"] = str(threads or torch.get_num_threads())
    return env


@dataclass(frozen=True)
class EngineSettings:
    """What the engine is built with beyond the model folder.

    dtype: the policy's parameter dtype (log-probs compared with the trainer's need the same).
    max_model_len: prompt + response positions per sequence; None: the model's own.
    sleep_mode: free the KV cache and offload the weights while the trainer updates (CUDA only;
        None: on where the platform supports it).
    seed: the engine's own seed (each request also carries one drawn from the run's generator).
    """

    dtype: torch.dtype = torch.float32
    max_model_len: int | None = None
    sleep_mode: bool | None = None
    seed: int = 0


def build_engine(model_path: str, settings: EngineSettings = EngineSettings()):
    """A ``vllm.LLM`` for ``model_path``, in process, eager (no CUDA graphs or compilation:
    the weights change every step), reporting ``LOGPROBS_MODE`` log-probs. Returns the engine
    and whether sleep mode is on."""
    platform = vllm_platform()
    for key, value in engine_environment(platform).items():
        os.environ.setdefault(key, value)
    from vllm import LLM

    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise ValueError(
            "backend: vllm runs in process here, but VLLM_ENABLE_V1_MULTIPROCESSING is "
            f"{os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']!r}; unset it or set it to 0"
        )
    sleep = platform != "cpu" if settings.sleep_mode is None else settings.sleep_mode
    if sleep and platform == "cpu":
        raise ValueError("sleep_mode: vLLM's sleep mode needs CUDA; its CPU build has none")
    kwargs = dict(
        model=str(model_path),
        dtype=str(settings.dtype).removeprefix("torch."),
        enforce_eager=True,
        seed=settings.seed,
        logprobs_mode=LOGPROBS_MODE,
    )
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if platform == "cpu":
        # a prompt whose prefill is split across engine steps has its sampled token discarded,
        # and vLLM then rewinds the request's seeded generator, which a CPU generator cannot
        # ("CPU Generator does not use offset"): so prompts are prefilled whole
        kwargs.update(enable_chunked_prefill=False)
    else:
        kwargs.update(gpu_memory_utilization=COLOCATE_GPU_MEMORY, enable_sleep_mode=sleep)
    # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process; the
    # trainer shares the process, so the original comes back once the engine stands
    own_set_threads = torch.set_num_threads
    try:
        engine = LLM(**kwargs)
    finally:
        torch.set_num_threads = own_set_threads
    return engine, sleep


def weights_version(policy) -> tuple[tuple[int, int], ...]:
    """A fingerprint that changes whenever a parameter of ``policy`` changes: each parameter's
    storage and its in-place version counter (which every optimiser step, ``copy_`` and
    ``load_state_dict`` advances)."""
    return tuple((p.data_ptr(), p._version) for p in policy.parameters())


def policy_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for each of the policy's parameters and buffers that a checkpoint holds,
    under its Hugging Face name (what vLLM's ``load_weights`` maps onto its fused layers: q/k/v
    into ``qkv_proj``, gate/up into ``gate_up_proj``); a tied output embedding appears once, as
    the input embedding, as in the checkpoint."""
    for name, tensor in policy.state_dict(keep_vars=False).items():
        if name == "lm_head.weight" and getattr(policy.config, "tie_word_embeddings", False):
            continue
        yield name, tensor.detach()


def repack_tied_head(model) -> int:
    """Redo the kernel processing of vLLM's output head (``ParallelLMHead``), returning how
    many heads it processed. A tied head shares the input embedding's parameter, so the in-place
    reload updates its values, but receives no weights of its own and is not processed again; on
    the CPU build, where processing packs a copy of the weight for the matrix kernel, it would
    go on computing logits with the weights it was built with."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    heads = [m for m in model.modules() if isinstance(m, ParallelLMHead)]
    for head in heads:
        head.quant_method.process_weights_after_loading(head)
    return len(heads)


def load_policy_weights(engine, policy) -> None:
    """Load the policy's current weights into the engine's model in memory, through vLLM's
    in-place reload (the worker's ``reload_weights``: the model's own ``load_weights`` with the
    layers restored to their checkpoint layout first and their kernel processing redone after,
    which the CPU build needs: it packs each linear layer's weight for its matrix kernel at load
    time), and the tied output head repacked (``repack_tied_head``). In process, the tensors
    pass by reference. Then drop the prefix cache, whose KV entries were computed with the old
    weights."""
    weights = list(policy_weights(policy))
    with torch.no_grad():
        engine.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        if getattr(policy.config, "tie_word_embeddings", False):
            engine.apply_model(repack_tied_head)
    engine.reset_prefix_cache()


@contextmanager
def kept_threads() -> Iterator[None]:
    """torch's thread count as it was, after a call into the engine."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
