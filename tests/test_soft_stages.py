"""SoFT's baselines and compositions as configs, through run.py on a tiny random LLaMA: saved generations, the
judge against another run, SFT+ICT as a stage from the SFT run, the extracted (truncated) model, the exit x rank
grid on an NF4 base, the exit-vs-exit table."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, run, write_addition_qa

BASE = ["model=tiny_llama", "quantization=none", "adapter=none", "sampling=all", "trainer.max_steps=4",
        "data.limit_val=6", "data.limit_test=6", "data.batch_size=4", "eval.max_new_tokens=3", "export.submodels=[]",
        "threads=1"]


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """SFT (last exit trained, both exits evaluated) and SoFT judged against it, in one parent folder."""
    root = tmp_path_factory.mktemp("runs")
    data = write_addition_qa(root / "qa.jsonl", n=60)
    args = [*BASE, f"data.source={data}"]
    sft = run([*args, "depth.exits=[2]", "depth.eval_exits=[1,2]", f"hydra.run.dir={root / 'table' / 'sft'}"], env)
    assert sft.returncode == 0, sft.stderr[-3000:]
    soft = run([*args, "depth.exits=[1,2]", "judge=reference", f"judge.against={root / 'table' / 'sft'}",
                f"hydra.run.dir={root / 'table' / 'soft'}"], env)
    assert soft.returncode == 0, soft.stderr[-3000:]
    return root, args


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generations_per_exit_and_the_judge_score_of_each_exit(runs):
    root, _ = runs
    sft, soft = root / "table" / "sft", root / "table" / "soft"
    gens = lines(sft / "generations.jsonl")
    assert sorted({g["submodel"] for g in gens}) == ["depth=1", "depth=2"] and len(gens) == 12
    results = json.loads((sft / "results.json").read_text())
    for cell in ("depth=1", "depth=2"):  # the saved generations are what exact match scored
        rows = [g for g in gens if g["submodel"] == cell]
        assert results[f"test/em@{cell}"] == pytest.approx(sum(g["em"] for g in rows) / len(rows))
        assert all(g["prompt"].startswith("### Question:") and g["answers"] for g in rows)
    scores = json.loads((soft / "results.json").read_text())
    verdicts = lines(soft / "judge.jsonl")
    for cell in ("depth=1", "depth=2"):
        mine = [v for v in verdicts if v["submodel"] == cell]
        outcomes = [o for v in mine for o in (v["outcome_ab"], v["outcome_ba"])]
        assert scores[f"test/judge_total@{cell}"] == len(outcomes) == 12
        assert scores[f"test/judge@{cell}"] == pytest.approx((outcomes.count(1) - outcomes.count(-1)) / 12)


def test_exit_table_in_the_papers_layout(runs, env):
    root, _ = runs
    proc = run(["task=report", "table=soft_exits_judge", f"report.sweep_dir={root / 'table'}"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (root / "table" / "soft_exits_judge.md").read_text().splitlines()
    assert table[0] == "### SoFT: test/judge per exit (each column one depth)"
    rows = [line for line in table if line.startswith("| ")]
    assert rows[0] == "| experiment | depth=1 | depth=2 |" and len(rows) == 2  # one row: SoFT judged against SFT


def test_sft_ict_stage_freezes_the_body_and_starts_from_the_sft_run(runs, env):
    from experiments.core.runtime import RunContext
    from experiments.paradigms.lm import LMParadigm

    root, args = runs
    sft = root / "table" / "sft"
    ict = [*args, "depth.exits=[1]", "depth.eval_exits=[1,2]", "depth.exit_heads=true", f"init_from={sft}"]
    sft_state = torch.load(sft / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    (root / "ict0").mkdir()
    module, _ = LMParadigm().prepare(RunContext(compose_cfg([*ict, "data.source=stdlib_qa"]), root / "ict0"))
    own = module.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sft_state.items())  # stage 2 starts from stage 1, by value
    torch.testing.assert_close(module.exit_heads.heads["1"].weight, sft_state["model.lm_head.weight"], atol=0, rtol=0)
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["exit_heads.heads.1.weight"]

    trained = run([*ict, "trainer.max_steps=3", f"hydra.run.dir={root / 'ict'}"], env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    state = torch.load(root / "ict" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert list(state) == ["exit_heads.heads.1.weight"]  # the body, norm and shared head stayed frozen
    assert not torch.equal(state["exit_heads.heads.1.weight"], sft_state["model.lm_head.weight"])  # the head trained
    before, after = (json.loads((d / "results.json").read_text()) for d in (sft, root / "ict"))
    assert after["test/loss@depth=2"] == pytest.approx(before["test/loss@depth=2"], abs=1e-6)  # exit 2: SFT's own head
    assert after["test/loss@depth=1"] != pytest.approx(before["test/loss@depth=1"], abs=1e-6)
    assert json.loads((root / "ict" / "run_info.json").read_text())["init_from"]["run_dir"] == str(sft.resolve())


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_truncated_model_equals_the_first_layers_of_the_full_one_at_init():
    from experiments.paradigms.lm import build_lm
    from modules.multi_exit import DecoderDepth

    common = ["model=tiny_llama", "quantization=none", "adapter=none", "model.random_config.num_hidden_layers=3"]
    full, _, _ = build_lm(compose_cfg(common))
    ids = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    for n in (1, 2):
        cut, _, nested = build_lm(compose_cfg([*common, f"depth.truncate={n}", f"depth.exits=[{n}]"]))
        assert len(cut.model.layers) == n and cut.config.num_hidden_layers == n
        DecoderDepth(full).set_depth(n)
        with torch.no_grad():
            torch.testing.assert_close(cut(ids).logits, full(ids).logits)
        assert nested.space.axes == {"depth": [n]}
    cfg = compose_cfg(["experiment=soft/extracted_quick"])  # the sweep: one job per n, logged as depth=n
    assert list(cfg.depth.exits) == [30] and str(cfg.hydra.sweeper.params["depth.truncate"]) == "6,12,18,24,30"


def test_decoding_benchmark_runs_on_a_trained_run_with_its_test_prompts(runs):
    from experiments.benchmarks.soft_decoding import main

    root, _ = runs
    sft = root / "table" / "sft"
    rows = main(["--run", str(sft), "--prompts", "run", "--num-prompts", "3", "--max-new-tokens", "3",
                 "--exit-layer", "1", "--exits", "1", "--thresholds", "1.0", "--threads", "1"])
    by = {r["method"]: r for r in rows if "note" not in r}
    want = [g["em"] for g in lines(sft / "generations.jsonl") if g["submodel"] == "depth=2"][:3]
    assert by["full greedy"]["answer_em"] == pytest.approx(sum(want) / 3)  # the trained weights, the run's prompts
    for name in ("hf assistant_early_exit", "ours self-speculative", "early-exit loop, no exit"):
        assert by[name]["exact_match"] == 1.0 and by[name]["answer_em"] == by["full greedy"]["answer_em"]
