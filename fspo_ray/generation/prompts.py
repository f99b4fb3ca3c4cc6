"""Every prompt the LLM provider sends, in one place.

Each builder returns chat messages ([{"role", "content"}]); engines render them with the
model's chat template. The parsers for the answers live in `parsers`; the judge's prompt and
label parser are shared with evaluation (fspo_ray/llm_judge.py).
"""

from __future__ import annotations

from fspo_ray.llm_judge import Messages, chat, judge_prompt  # noqa: F401 - the judge's wording is evaluation's too


def views_prompt(question: str, n: int) -> Messages:
    """Stage 3 (view-conditioning): list distinct views a person could hold on the question."""
    return chat(
        f"Question: {question}\n\n"
        f"List {n} clearly different views or preferences that different people could have about "
        "how this question should be answered (for example about tone, depth, format, budget or "
        "values). Write one view per line, numbered 1. to "
        f"{n}., each a single short sentence. Write nothing else."
    )


def response_prompt(question: str, *, view: str | None = None, persona: str | None = None) -> Messages:
    """Stage 4: answer the question, steered by a view (view-conditioning), by a persona
    (persona steering), or plainly (plain sampling)."""
    if view is not None:
        steer = f"Answer from this point of view, without naming it: {view}\n\n"
    elif persona is not None:
        steer = f"Answer the way this person would like best, without mentioning them: {persona}\n\n"
    else:
        steer = ""
    return chat(f"{steer}Question: {question}\n\nWrite a helpful answer of at most 120 words.")


def refinement_prompt(description: str, question: str, chosen: str, rejected: str) -> Messages:
    """Stage 7: the description did not decide the pair and a side was picked at random;
    state that preference as one sentence to append to the description."""
    return chat(
        f"User description: {description}\n\n"
        f"Question: {question}\n\n"
        f"The user preferred this response:\n{chosen}\n\n"
        f"over this one:\n{rejected}\n\n"
        "Write one sentence, starting with 'They also prefer', that states the general preference "
        "this choice reveals and that the description above does not already state. "
        "Do not mention length unless the two responses differ mainly in length. Write only the sentence."
    )
