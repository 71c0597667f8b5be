"""The pairwise judge (modules/judge.py): scores, both orders, the LM judge's verdict against an independent
computation, the reference judge, pairing two runs' generations."""
import pytest
import torch

from modules.judge import (LogProbJudge, Pair, ReferenceJudge, continuation_token, judge_both_orders,
                           judge_generations, pairwise_score, token_f1)


class FirstPosition:
    """A judge with pure position bias: the first answer always wins."""
    name = "first"

    def prefer(self, pairs):
        return [1] * len(pairs)


class Longer:
    """A consistent judge: the longer answer wins, equal length ties."""
    name = "longer"

    def prefer(self, pairs):
        return [(len(p.first) > len(p.second)) - (len(p.first) < len(p.second)) for p in pairs]


def test_pairwise_score_is_wins_minus_losses_over_total():
    assert pairwise_score([1, 1, -1, 0]) == {"score": 0.25, "wins": 2, "losses": 1, "ties": 1, "total": 4}
    assert pairwise_score([-1, -1])["score"] == -1.0


def test_both_orders_cancel_position_bias_and_keep_a_consistent_judge():
    pairs = [Pair("q", "long answer", "short"), Pair("q", "a", "bbb"), Pair("q", "same", "same")]
    biased, per_pair = judge_both_orders(FirstPosition(), pairs)
    assert biased["score"] == 0.0 and biased["total"] == 6  # wins in order (A,B) = losses in order (B,A)
    assert per_pair[:2] == [(1, -1), (1, -1)] and per_pair[2] == (0, 0)  # identical answers: a tie, not judged
    assert biased["order_agreement"] == 0.0
    longer, per_pair = judge_both_orders(Longer(), pairs)
    assert per_pair == [(1, 1), (-1, -1), (0, 0)]
    assert longer["score"] == 0.0 and longer["wins"] == 2 and longer["losses"] == 2 and longer["ties"] == 2
    assert longer["order_agreement"] == 1.0


def test_reference_judge_prefers_the_answer_closer_to_the_references():
    assert token_f1("The Eiffel tower", ["eiffel tower"]) == 1.0  # normalised: case, articles
    assert token_f1("tower in Paris", ["eiffel tower"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    pairs = [Pair("q", "os.path", "sys", ("os.path",)), Pair("q", "json", "json module", ("json",)),
             Pair("q", "re", "math", ("random",))]
    assert ReferenceJudge().prefer(pairs) == [1, 1, 0]
    score, _ = judge_both_orders(ReferenceJudge(), pairs)
    assert score["score"] == pytest.approx(4 / 6)


def tiny_judge():
    from transformers import LlamaForCausalLM

    from conftest import tiny_llama_config
    from modules.hf_model import byte_tokenizer

    torch.manual_seed(0)
    tok = byte_tokenizer()
    return LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok))).eval(), tok


def test_logprob_judge_reads_the_choice_tokens_like_an_unbatched_forward():
    model, tok = tiny_judge()
    judge = LogProbJudge(model, tok, prompt="pandalm", tie="Tie", batch_size=2)
    pairs = [Pair("2+2=?", "4", "5"), Pair("capital of France?", "Paris, the city of light", "Rome"),
             Pair("x", "yes", "no")]
    lp = judge.choice_logprobs(pairs)  # batched, left-padded
    for pair, row in zip(pairs, lp):
        text = judge.render(pair)
        ids = tok(text)["input_ids"]
        want = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        choice = [tok(text + c, add_special_tokens=True)["input_ids"][len(ids)] for c in ("1", "2", "Tie")]
        torch.testing.assert_close(row, want[choice], atol=1e-4, rtol=1e-4)
    verdicts = judge.prefer(pairs)
    for v, row in zip(verdicts, lp.tolist()):
        assert v == (0 if row[2] > max(row[:2]) else (1 if row[0] > row[1] else -1))
    wide = LogProbJudge(model, tok, prompt="pandalm", margin=1e9)  # any gap counts as a tie
    assert wide.prefer(pairs) == [0, 0, 0]


def test_continuation_token_follows_the_prompt():
    _, tok = tiny_judge()
    ids = tok("Evaluation:\n", add_special_tokens=False)["input_ids"]
    assert tok.decode([continuation_token(tok, ids, "1", "Evaluation:\n")]) == "1"


def test_generations_pair_by_prompt_and_only_shared_cells_are_judged():
    ours = {"depth=1": [{"prompt": "a", "prediction": "x", "answers": ["x"]},
                        {"prompt": "b", "prediction": "y", "answers": ["z"]},
                        {"prompt": "a", "prediction": "w", "answers": ["w"]}],
            "depth=9": [{"prompt": "a", "prediction": "x", "answers": ["x"]}]}
    theirs = {"depth=1": [{"prompt": "b", "prediction": "z", "answers": ["z"]},  # another order
                          {"prompt": "a", "prediction": "q", "answers": ["x"]},
                          {"prompt": "a", "prediction": "w", "answers": ["w"]}]}
    out = judge_generations(ReferenceJudge(), ours, theirs)
    assert list(out) == ["depth=1"]
    score, records = out["depth=1"]
    assert [(r["ours"], r["theirs"]) for r in records] == [("x", "q"), ("y", "z"), ("w", "w")]
    assert [(r["outcome_ab"], r["outcome_ba"]) for r in records] == [(1, 1), (-1, -1), (0, 0)]
    assert score["score"] == 0.0 and score["total"] == 6


class BiasedLogOdds:
    """An LM-like judge with a strong preference for response 1 on top of a weak quality signal (length)."""
    margin = 0.0

    def log_odds(self, pairs):
        return [5.0 + 0.1 * (len(p.first) - len(p.second)) for p in pairs]

    def prefer(self, pairs):
        return [1 if x > 0 else -1 for x in self.log_odds(pairs)]


def test_calibrated_verdicts_cancel_a_constant_position_preference():
    pairs = [Pair("q", "long answer", "short"), Pair("q", "aaaa", "b"), Pair("q", "ccc", "ddd")]
    plain, _ = judge_both_orders(BiasedLogOdds(), pairs)
    assert plain["score"] == 0.0 and plain["order_agreement"] == 0.0  # always "1": no information left
    calibrated, per_pair = judge_both_orders(BiasedLogOdds(), pairs, calibrated=True)
    assert per_pair == [(1, 1), (1, 1), (0, 0)]  # the length signal, whatever the order
    assert calibrated["score"] == pytest.approx(4 / 6) and calibrated["ties"] == 2
    assert calibrated["order_agreement"] == 1.0


def test_logprob_judge_log_odds_are_its_choice_log_probability_gap():
    model, tok = tiny_judge()
    judge = LogProbJudge(model, tok, prompt="chat")
    pairs = [Pair("2+2=?", "4", "5"), Pair("x", "yes", "no")]
    lp = judge.choice_logprobs(pairs)
    assert judge.log_odds(pairs) == pytest.approx((lp[:, 0] - lp[:, 1]).tolist())
