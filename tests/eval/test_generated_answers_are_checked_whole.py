"""Issue 18: the eval's check of the LLM's own answers (format compliance, tag agreement) sees
whole answers. Before, generation stopped at 64 new tokens, shorter than most built-in answers
in the format, so an answer cut before its rationale counted as out of format."""

import numpy as np

from so8t.data import load_builtin
from so8t.eval.taskhead import MAX_NEW_TOKENS, Generated, generation_summary
from so8t.model import load_tokenizer


def test_every_built_in_answer_fits_the_generation_limit_with_the_default_tokenizer():
    tok = load_tokenizer("embedded:gemma3-270m")
    for name in ("builtin", "contrast", "wide"):
        for split in ("train", "test"):
            longest = max(
                len(tok(r.response + tok.eos_token, add_special_tokens=False)["input_ids"])
                for r in load_builtin(split, name)
                if r.response
            )
            assert longest <= MAX_NEW_TOKENS, (name, split, longest)


def test_the_summary_counts_format_end_of_sequence_and_agreement():
    gen = [
        Generated("Action: ALLOW\nSure.\nRationale: harmless", 0, True),
        Generated("Action: REFUSE\nNo.\nRationale: harmful", 2, True),
        Generated("Action: ALLOW\nSure, here is a long", None, False),  # cut at the limit
        Generated("Hai! Hai! Hai!", None, True),
    ]
    s = generation_summary(gen, labels=np.array([0, 1, 0, 2]), head_pred=np.array([0, 2, 0, 2]))
    assert s["n"] == 4 and s["format_compliance"] == 0.5 and s["stopped"] == 0.75
    assert s["tag_agrees_with_head"] == 1.0 and s["tag_agrees_with_label"] == 0.5
