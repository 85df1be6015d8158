"""Our tasks as TRL reads them: the dataset (``trl_dataset``, each prompt given so that TRL's
own tokenization gives the tokens ours reads, ``trl_prompt``) and the reward (``trl_reward``)."""

from __future__ import annotations

from llm_bridge.rollout import PromptFormat, as_messages, prompt_token_ids, uses_chat_template


def trl_prompt(tokenizer, prompt, fmt: PromptFormat | None = None) -> str | list[dict]:
    """The ``prompt`` field of the TRL engine's dataset for ``prompt``, such that TRL's own
    tokenization gives exactly ``prompt_token_ids``: the conversation when the chat template
    renders it (TRL applies the template itself, ``add_generation_prompt=True``), else the text
    that TRL's ``tokenizer(text)`` encodes to BOS + the raw text. TRL has no prompt cut, so a
    prompt that ``max_prompt_tokens`` would cut is refused. ``fmt``: the run's prompt format
    (default: the plain one)."""
    fmt = PromptFormat() if fmt is None else fmt
    ids = prompt_token_ids(tokenizer, prompt, fmt)
    if fmt.max_prompt_tokens is not None:
        whole = prompt_token_ids(tokenizer, prompt, PromptFormat(fmt.chat_template))
        if len(whole) > len(ids):
            raise ValueError(
                f"max_prompt_tokens: the TRL engine cannot cut prompts, and one is {len(whole)} "
                f"tokens (> {fmt.max_prompt_tokens}); shorten the dataset's prompts, or use "
                "--engine ours"
            )
    if uses_chat_template(tokenizer, prompt, fmt.chat_template):
        return as_messages(prompt)
    # TRL encodes a text prompt with add_special_tokens=True: a tokenizer whose post-processor
    # writes BOS needs the bare text, one without it the BOS token's text in front
    for text in (prompt, (tokenizer.bos_token or "") + prompt):
        if tokenizer(text)["input_ids"] == ids:
            return text
    raise ValueError(
        "chat_template: the TRL engine cannot be given this raw prompt so that it reads the "
        f"same tokens as ours ({prompt[:40]!r}); use --engine ours, or a chat template"
    )


def trl_dataset(examples, tokenizer, fmt: PromptFormat | None = None):
    """Examples as TRL wants them: ``prompt`` such that TRL reads the tokens our rollouts read
    (``trl_prompt``: the conversation when the chat template renders it, else the raw text) and
    ``answer``."""
    from datasets import Dataset

    fmt = PromptFormat() if fmt is None else fmt
    return Dataset.from_dict(
        {
            "prompt": [trl_prompt(tokenizer, e.prompt, fmt) for e in examples],
            "answer": [e.answer for e in examples],
        }
    )


def trl_reward(task):
    """The task's reward over TRL's completions: texts, or (for a conversational dataset) the
    assistant message TRL wraps each one in."""

    def text(completion) -> str:
        return completion[-1]["content"] if isinstance(completion, list) else completion

    def reward(completions, answer, **_):
        return [task.reward(text(c), a) for c, a in zip(completions, answer, strict=True)]

    reward.__name__ = f"{task.name}_reward"
    return reward


__all__ = ["trl_dataset", "trl_prompt", "trl_reward"]
