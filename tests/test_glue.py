"""The GLUE paradigm's pieces: metrics against sklearn / scipy, the loader on local GLUE-format rows, checks."""
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from data.glue import TASKS, GlueDataModule, get_task, read_local, split_train
from modules.classifier_module import NestedSequenceClassifier, glue_metrics
from modules.submodel import FixedSampler, NestedModel, SubModel, SubModelSpace
from tests.test_configs import compose_cfg, validate


# --- metrics -------------------------------------------------------------------------------------------
def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 101)
    preds = np.where(rng.random(101) < 0.7, target, 1 - target)
    out = glue_metrics(("acc", "f1", "mcc"), torch.tensor(preds), torch.tensor(target), 2)
    assert out["acc"] == pytest.approx(accuracy_score(target, preds))
    assert out["f1"] == pytest.approx(f1_score(target, preds))
    assert out["mcc"] == pytest.approx(matthews_corrcoef(target, preds), abs=1e-6)


def test_multiclass_matthews_and_accuracy_match_sklearn():
    target = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 0, 2, 1])
    preds = np.array([0, 2, 2, 2, 1, 0, 1, 1, 0, 2, 2, 0])
    out = glue_metrics(("acc", "mcc"), torch.tensor(preds), torch.tensor(target), 3)
    assert out["acc"] == pytest.approx(accuracy_score(target, preds))
    assert out["mcc"] == pytest.approx(matthews_corrcoef(target, preds), abs=1e-6)


def test_correlations_match_scipy_with_ties():
    target = np.array([0.0, 1.2, 2.5, 2.5, 3.8, 5.0, 4.0, 1.0])
    preds = np.array([0.3, 1.0, 2.0, 2.9, 2.9, 4.5, 4.6, 0.2])
    out = glue_metrics(("pearson", "spearman"), torch.tensor(preds), torch.tensor(target), 1)
    assert out["pearson"] == pytest.approx(pearsonr(preds, target)[0], abs=1e-6)
    assert out["spearman"] == pytest.approx(spearmanr(preds, target)[0], abs=1e-6)


def test_epoch_metrics_pool_predictions_over_batches():
    """Matthews correlation of the whole epoch, not the mean over batches (it is not batch-averageable)."""
    module = NestedSequenceClassifier(torch.nn.Linear(1, 2), NestedModel({}, {}), FixedSampler(SubModelSpace({})),
                                      optimizer=None, num_labels=2, metrics=("mcc", "f1"))
    batches = [(torch.tensor([1, 1, 0, 1]), torch.tensor([1, 0, 0, 1])), (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))]
    cell = SubModel.of(kron_rank=1).merged({"testset": "matched"})
    module._collected = {("test", cell): batches}
    out = module.epoch_metrics("test")
    preds, target = np.array([1, 1, 0, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 0, 1, 1])
    assert out["test/mcc@kron_rank=1,testset=matched"] == pytest.approx(matthews_corrcoef(target, preds), abs=1e-6)
    assert out["test/f1@kron_rank=1,testset=matched"] == pytest.approx(f1_score(target, preds))
    assert module._collected == {}


# --- the loader ----------------------------------------------------------------------------------------
class CharTokenizer:
    """Enough of a tokenizer for the collate function: one id per character, pairs joined by 0."""

    def __call__(self, a, b=None, truncation=True, max_length=16, padding=True, return_tensors="pt"):
        texts = [x + ("\0" + y if b is not None else "") for x, y in zip(a, b if b is not None else a)]
        ids = [[ord(c) % 250 + 1 for c in t][:max_length] for t in texts]
        width = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}


def write(path, header, rows, sep="\t"):
    path.write_text("\n".join(sep.join(map(str, r)) for r in [header, *rows]) + "\n")


def test_local_pairs_in_glue_tsv_layout(tmp_path):
    """MRPC's own TSV columns (Quality, #1 String, #2 String; quotes left alone), a seeded held-out val split."""
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    rows = [[i % 2, i, i + 100, f'He said "hi" {i}', f"sentence {i}"] for i in range(20)]
    write(tmp_path / "train.tsv", header, rows)
    write(tmp_path / "dev.tsv", header, rows[:6])
    dm = GlueDataModule("mrpc", CharTokenizer(), source=str(tmp_path), batch_size=4, eval_batch_size=3,
                        val_size=0.25, max_length=40)
    dm.setup()
    assert len(dm.splits["train"]) == 15 and len(dm.splits["val"]) == 5 and len(dm.test_sets[0]) == 6
    assert dm.test_sets[0][0] == {"sentence1": 'He said "hi" 0', "sentence2": "sentence 0", "label": 0}
    held = {r["sentence1"] for r in dm.splits["val"]}
    assert held.isdisjoint(r["sentence1"] for r in dm.splits["train"])
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.long and batch["input_ids"].shape[0] == 4
    assert dm.eval_conditions("test") == [{}] and dm.eval_conditions("val") == [{}]
    dm2 = GlueDataModule("mrpc", CharTokenizer(), source=str(tmp_path), val_size=0.25)
    dm2.setup()
    assert dm2.splits == dm.splits  # the split is a pure function of split_seed


def test_local_regression_csv(tmp_path):
    """STS-B in HF's column names as CSV: float labels, MSE-ready float tensors."""
    rows = [[f"a {i}", f"b {i}", round(i * 0.25, 2)] for i in range(12)]
    write(tmp_path / "train.csv", ["sentence1", "sentence2", "label"], rows, sep=",")
    write(tmp_path / "validation.csv", ["sentence1", "sentence2", "label"], rows[:5], sep=",")
    dm = GlueDataModule("stsb", CharTokenizer(), source=str(tmp_path), val_size=2, eval_batch_size=5)
    dm.setup()
    assert len(dm.splits["val"]) == 2 and dm.num_labels == 1
    batch = next(iter(dm.test_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_mnli_has_matched_and_mismatched_test_sets(tmp_path):
    header = ["index", "sentence1", "sentence2", "gold_label"]  # GLUE's own MNLI columns
    labels = ["entailment", "neutral", "contradiction"]
    rows = [[i, f"p{i}", f"h{i}", labels[i % 3]] for i in range(9)]
    write(tmp_path / "train.tsv", header, rows)
    write(tmp_path / "dev_matched.tsv", header, rows[:3])
    write(tmp_path / "dev_mismatched.tsv", header, rows[3:7])
    dm = GlueDataModule("mnli", CharTokenizer(), source=str(tmp_path), val_size=1)
    dm.setup()
    assert [len(t) for t in dm.test_sets] == [3, 4]
    assert dm.test_sets[1][0] == {"premise": "p3", "hypothesis": "h3", "label": 0}
    assert dm.eval_conditions("test") == [{"testset": "matched"}, {"testset": "mismatched"}]
    assert len(dm.test_dataloader()) == 2


def test_bad_label_and_missing_columns_are_one_line_errors(tmp_path):
    write(tmp_path / "train.tsv", ["sentence1", "sentence2", "label"], [["a", "b", "maybe"]])
    write(tmp_path / "validation.tsv", ["sentence1", "sentence2", "label"], [["a", "b", "entailment"]])
    with pytest.raises(ValueError, match="label 'maybe' is not an integer or one of entailment, not_entailment"):
        read_local(tmp_path, get_task("rte"))
    with pytest.raises(ValueError, match=r"no row has the columns question1, question2, label") as err:
        read_local(tmp_path, get_task("qqp"))
    assert "\n" not in str(err.value)


def test_unknown_task_is_one_line():
    with pytest.raises(ValueError) as err:
        get_task("squad")
    msg = str(err.value)
    assert "\n" not in msg and "data.task='squad'" in msg and "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte" in msg


def test_split_train_counts():
    rows = [{"i": i} for i in range(100)]
    train, val = split_train(rows, 0.1, 0)
    assert len(val) == 10 and len(train) == 90
    assert split_train(rows, 7, 0)[1] == split_train(rows, 7, 0)[1] != split_train(rows, 7, 1)[1]


def test_offline_topics_are_deterministic_and_balanced(tmp_path, monkeypatch):
    from data import stdlib_topics

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = stdlib_topics.generate()
    assert first == stdlib_topics.generate()
    folder = stdlib_topics.build_stdlib_topics()
    splits = read_local(folder, TASKS["stdlib_topics"])
    assert len(splits["train"]) + len(splits["validation"]) == sum(map(len, first.values()))
    counts = np.bincount([r["label"] for r in splits["train"]], minlength=8)
    assert counts.min() >= 60 and len(counts) == 8
    texts = [r["sentence"] for s in splits.values() for r in s]
    assert len(set(texts)) == len(texts)  # no sentence in two splits or two packages


def test_offline_topics_do_not_depend_on_other_imports():
    """transformers attaches warning_once to logging.Logger; the task must not take it in."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, {root!r}); {pre}from data.stdlib_topics import generate; "
            "import hashlib, json; print(hashlib.sha256(json.dumps(generate()).encode()).hexdigest())")
    from tests.conftest import ROOT

    digests = {subprocess.run([sys.executable, "-c", code.format(root=str(ROOT), pre=pre)], capture_output=True,
                              text=True, check=True).stdout for pre in ("", "import transformers.utils.logging; ")}
    assert len(digests) == 1


# --- config checks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["data.task=squad"], "data.task='squad' is not a GLUE task; valid choices: cola, sst2"),
    (["eval.metric=test/pearson"], "eval.metric='test/pearson' is not measured for data.task=stdlib_topics"),
    (["data=glue_sst2", "data.source=builtin"], "data.source=builtin but data.task='sst2' is not built offline"),
    (["data.source=./no/such/folder"], "data.source='./no/such/folder': no such file or folder"),
    (["adapter.r_min=3"], "adapter.r_min=3 must be <= adapter.r_max=1"),
    (["model.name_or_path=random:nosucharch"], "unknown architecture 'nosucharch'"),
    (["export.submodels=[best]"], "export.submodels: 'best': the GLUE paradigm exports the largest sub-model only"),
    (["adapter=krona_block"], "adapter.target_modules is empty: variant 'krona_block' wraps whole FFN blocks"),
    (["model=tiny_t5", "adapter=krona_block", "export.merge=true"],
     "export.merge=true with adapter.variant='krona_block': only 'krona'"),
    (["quantization=nf4", "export.merge=true"], "export.merge=true on a 4-bit base"),
    (["quantization=nf4", "adapter=none"], "adapter=none \\(full fine-tuning\\) cannot train a quantized base"),
])
def test_bad_glue_choices_are_one_line_errors(overrides, message):
    from experiments.core.config import ConfigError

    cfg = compose_cfg(["experiment=krona/quick", *overrides])
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_every_glue_task_has_a_config_with_its_official_metric():
    expected = {"cola": "test/mcc", "sst2": "test/acc", "mrpc": "test/f1", "stsb": "test/pearson",
                "qqp": "test/f1", "mnli": "test/acc", "qnli": "test/acc", "rte": "test/acc"}
    for task, metric in expected.items():
        cfg = compose_cfg(["experiment=krona/roberta_base_glue", f"data=glue_{task}"])
        assert cfg.data.task == task and cfg.eval.metric == metric and cfg.data.source == "hf"
        validate(cfg)


@pytest.mark.parametrize("adapter", ["none", "lora", "krona", "krona_block", "krona_block_res"])
def test_t5_base_preset_validates_for_every_paper_row(adapter):
    cfg = compose_cfg(["experiment=krona/t5_base_glue", f"adapter={adapter}", "trainer=cpu"])
    validate(cfg)
    if adapter.startswith("krona_block"):
        assert list(cfg.adapter.target_modules) == ["DenseReluDense"] and cfg.adapter.variant == adapter
