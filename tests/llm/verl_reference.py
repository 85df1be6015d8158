"""Run verl 0.9.1's policy losses on given inputs (run by tests/llm/test_verl_parity.py).

This script runs in a separate virtual environment that holds verl (``make parity`` builds it);
it imports torch and verl only, never this project. Usage:

    python verl_reference.py INPUT.pt OUTPUT.pt

INPUT holds ``tensors`` (log_prob, old_log_prob, advantages, response_mask, sampler_log_prob,
float64) and ``cases``: each a dict with ``loss_mode``, ``actor`` (ActorConfig fields),
``policy_loss`` (PolicyLossConfig fields), ``loss_agg_mode``, ``global_batch_info`` and, optionally,
``rollout_is`` (``{"level": "token" | "sequence", "threshold": C}``: verl's rollout correction,
its weights from the old and the sampler's log-probs, passed to the loss). OUTPUT holds, per case,
the loss, its gradient with respect to log_prob, verl's metrics and the rollout-correction
weights (None without them).
"""

import sys

import torch
from verl.trainer.ppo import core_algos, rollout_corr_helper
from verl.workers.config.actor import ActorConfig, PolicyLossConfig


def run_case(tensors: dict, case: dict) -> dict:
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_mini_batch_size=1,
        ppo_micro_batch_size_per_gpu=1,
        policy_loss=PolicyLossConfig(loss_mode=case["loss_mode"], **case["policy_loss"]),
        **case["actor"],
    )
    config.global_batch_info.update(case["global_batch_info"])  # a mutable dict, as verl sets it
    log_prob = tensors["log_prob"].clone().requires_grad_(True)
    weights, corr_metrics = None, {}
    if case.get("rollout_is"):
        proto, _, corr_metrics = rollout_corr_helper.compute_rollout_correction_and_rejection_mask(
            old_log_prob=tensors["old_log_prob"],
            rollout_log_prob=tensors["sampler_log_prob"],
            response_mask=tensors["response_mask"],
            rollout_is=case["rollout_is"]["level"],
            rollout_is_threshold=case["rollout_is"]["threshold"],
        )
        weights = proto.batch["rollout_is_weights"]
    loss_fn = core_algos.get_policy_loss_fn(case["loss_mode"])
    loss, metrics = loss_fn(
        old_log_prob=tensors["old_log_prob"],
        log_prob=log_prob,
        advantages=tensors["advantages"],
        response_mask=tensors["response_mask"],
        loss_agg_mode=case["loss_agg_mode"],
        config=config,
        rollout_is_weights=weights,
    )
    loss.backward()
    return {
        "loss": loss.detach(),
        "grad": log_prob.grad.detach(),
        "metrics": {**metrics, **corr_metrics},
        "weights": weights,
    }


def main(src: str, dst: str) -> None:
    data = torch.load(src)
    torch.save([run_case(data["tensors"], case) for case in data["cases"]], dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
