"""Small generated copies of the hub datasets and corpus folders the full-scale presets name, in the real schema.

A rehearsal (``rehearsal=tiny``, docs/rehearsal.md) reads these through the SAME loader code as at full scale:

- HF datasets: ``write_hub_fixture(root, id)`` writes ``<root>/<id>/`` the way a parquet dataset repository on
  the hub is laid out (``README.md`` with a ``configs:`` block naming each builder config and its split files,
  ``<config>/<split>-00000-of-00001.parquet`` carrying the ``datasets.Features``: ClassLabel names, Image,
  nested answer structs). Every loader calls ``load_dataset(hub_path(id), config, split=...)``: with the
  environment variable ``LAB_DATASETS_MIRROR`` set to ``root`` and ``<root>/<id>`` present, ``hub_path``
  returns the local copy and ``datasets`` applies the same builder semantics (config names, split names,
  slices such as ``train[500:]``, features) as for the hub id; otherwise it returns the id unchanged.
- Speech corpora are folders as released (Speech Commands, Fluent Speech Commands, VoxCeleb1, IEMOCAP):
  ``write_speech_fixture(root, task)`` writes that layout with short synthetic 16 kHz clips.

Each schema cites the dataset card it follows. Row counts are the fewest the presets' split slices need
(GSM8K holds out ``train[:500]``, TriviaQA ``train[:1000]``, OpenWebText ``train[-1000:]``); the rehearsal's
``limit_*`` keys then keep a handful of examples. Texts are templated, labels cycle through every class.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

MIRROR_ENV = "LAB_DATASETS_MIRROR"
VERSION = 3  # bump when a schema changes: cached fixture folders are keyed by it


def hub_path(dataset_id: str) -> str:
    """``dataset_id``, or its local copy under ``$LAB_DATASETS_MIRROR`` when one is there (a rehearsal)."""
    root = os.environ.get(MIRROR_ENV)
    if root and (Path(root) / dataset_id / "README.md").is_file():
        return str(Path(root) / dataset_id)
    return dataset_id


# --- schemas -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubFixture:
    dataset_id: str
    card: str                                        # the dataset card this schema follows
    configs: dict[str | None, dict[str, int]]        # builder config (None = default) -> split -> rows
    features: Callable[[str | None], Any]            # config -> datasets.Features
    row: Callable[[str | None, str, int], dict]      # (config, split, i) -> one row


WORDS = ("river", "lamp", "orbit", "violet", "stone", "harbor", "maple", "signal", "copper", "meadow")


def _text(i: int, n: int = 6) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def _f():
    import datasets

    return datasets


# openai/gsm8k, config "main" (also "socratic"): question, answer (worked solution ending "#### <number>");
# splits train 7,473 / test 1,319. https://huggingface.co/datasets/openai/gsm8k
def _gsm8k_row(config, split, i):
    a, b = i % 17 + 2, i % 5 + 3
    return {"question": f"A box holds {a} {WORDS[i % 10]}s. How many are in {b} boxes?",
            "answer": f"Each box holds {a}, so {b} boxes hold {a}*{b}=<<{a}*{b}={a * b}>>{a * b}.\n#### {a * b}"}


# tatsu-lab/alpaca (default config): instruction, input, output, text; one split, train (52,002).
# https://huggingface.co/datasets/tatsu-lab/alpaca
def _alpaca_row(config, split, i):
    inp = _text(i, 4) if i % 2 else ""
    out = f"The words are: {_text(i + 1, 3)}."
    return {"instruction": f"Rewrite the following {WORDS[i % 10]} list.", "input": inp, "output": out,
            "text": f"Below is an instruction... ### Instruction:\n... ### Response:\n{out}"}


# mandarjoshi/trivia_qa, config "rc.nocontext": question_id, question, question_source, entity_pages and
# search_results (empty lists in the nocontext configs), answer {aliases, normalized_aliases,
# matched_wiki_entity_name, normalized_matched_wiki_entity_name, normalized_value, type, value}; the test
# split's answers are empty. https://huggingface.co/datasets/mandarjoshi/trivia_qa
def _trivia_features(config):
    d = _f()
    s = d.Value("string")
    return d.Features({
        "question": s, "question_id": s, "question_source": s,
        "entity_pages": d.Sequence({"doc_source": s, "filename": s, "title": s, "wiki_context": s}),
        "search_results": d.Sequence({"description": s, "filename": s, "rank": d.Value("int32"), "title": s,
                                      "url": s, "search_context": s}),
        "answer": {"aliases": d.Sequence(s), "normalized_aliases": d.Sequence(s), "matched_wiki_entity_name": s,
                   "normalized_matched_wiki_entity_name": s, "normalized_value": s, "type": s, "value": s}})


def _trivia_row(config, split, i):
    value = WORDS[i % 10].title()
    hidden = split == "test"
    aliases = [] if hidden else [value, f"The {value}"]
    empty = {"doc_source": [], "filename": [], "title": [], "wiki_context": []}
    return {"question": f"Which word follows {WORDS[(i + 9) % 10]} in the list?", "question_id": f"tq_{split}_{i}",
            "question_source": "http://www.triviaquizzes.example/", "entity_pages": empty,
            "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                               "search_context": []},
            "answer": {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
                       "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                       "normalized_value": "" if hidden else value.lower(), "type": "" if hidden else "WikipediaEntity",
                       "value": "" if hidden else value}}


# cais/mmlu, config "all": question, subject, choices (4 strings), answer ClassLabel A/B/C/D; splits
# auxiliary_train, dev (5 per subject), validation, test. https://huggingface.co/datasets/cais/mmlu
def _mmlu_features(config):
    d = _f()
    return d.Features({"question": d.Value("string"), "subject": d.Value("string"),
                       "choices": d.Sequence(d.Value("string")), "answer": d.ClassLabel(names=list("ABCD"))})


def _mmlu_row(config, split, i):
    return {"question": f"Which word is a {WORDS[i % 10]}?", "subject": ("astronomy", "virology")[i % 2],
            "choices": [WORDS[(i + k) % 10] for k in range(4)], "answer": i % 4}


# nyu-mll/glue: one config per task; columns as below plus idx (int32); label a ClassLabel (-1 on the hidden
# test split), STS-B's a float32. MNLI's splits: train, validation_matched/mismatched, test_matched/mismatched.
# https://huggingface.co/datasets/nyu-mll/glue
GLUE = {  # task -> (text columns, label names or None for regression)
    "cola": (("sentence",), ("unacceptable", "acceptable")),
    "sst2": (("sentence",), ("negative", "positive")),
    "mrpc": (("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    "stsb": (("sentence1", "sentence2"), None),
    "qqp": (("question1", "question2"), ("not_duplicate", "duplicate")),
    "mnli": (("premise", "hypothesis"), ("entailment", "neutral", "contradiction")),
    "qnli": (("question", "sentence"), ("entailment", "not_entailment")),
    "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment")),
}


def _glue_features(task):
    d = _f()
    columns, names = GLUE[task]
    label = d.Value("float32") if names is None else d.ClassLabel(names=list(names))
    return d.Features({**{c: d.Value("string") for c in columns}, "label": label, "idx": d.Value("int32")})


def _glue_row(task, split, i):
    columns, names = GLUE[task]
    label = (i % 6) * 1.0 if names is None else (-1 if split.startswith("test") else i % len(names))
    return {**{c: _text(i + k, 5) for k, c in enumerate(columns)}, "label": label, "idx": i}


def _glue_splits(task, n):
    tests = ("validation_matched", "validation_mismatched", "test_matched", "test_mismatched") if task == "mnli" \
        else ("validation", "test")
    return {"train": n * 2, **{s: n for s in tests}}


# uoft-cs/cifar10 (config plain_text): img (Image, 32x32 RGB), label (ClassLabel, 10 names); train 50k / test 10k.
# https://huggingface.co/datasets/uoft-cs/cifar10
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# uoft-cs/cifar100: img, fine_label (ClassLabel, 100 names), coarse_label (ClassLabel, 20 names).
# https://huggingface.co/datasets/uoft-cs/cifar100
CIFAR100_FINE = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split())
CIFAR100_COARSE = tuple("""aquatic_mammals fish flowers food_containers fruit_and_vegetables
household_electrical_devices household_furniture insects large_carnivores large_man-made_outdoor_things
large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles
small_mammals trees vehicles_1 vehicles_2""".split())
DIGITS = tuple(str(k) for k in range(10))


def _image(i: int, side: int, mode: str, label: int):
    from PIL import Image

    rng = np.random.default_rng(i)
    base = np.full((side, side), 20 + 23 * label, dtype=np.uint8)  # the class shows in the mean intensity
    noise = rng.integers(0, 40, (side, side, 3) if mode == "RGB" else (side, side), dtype=np.uint8)
    pixels = (base[..., None] if mode == "RGB" else base) + noise
    return Image.fromarray(pixels.astype(np.uint8), mode)


def _image_fixture(dataset_id, card, config, splits, image_col, labels: dict[str, tuple], side, mode):
    def features(_):
        d = _f()
        return d.Features({image_col: d.Image(), **{c: d.ClassLabel(names=list(n)) for c, n in labels.items()}})

    def row(_, split, i):
        first = next(iter(labels))
        values = {c: i % len(n) for c, n in labels.items()}
        return {image_col: _image(i + 1000 * len(split), side, mode, values[first] % 10), **values}

    return HubFixture(dataset_id, card, {config: splits}, features, row)


def _text_fixture(dataset_id, card, config, splits):
    def features(_):
        d = _f()
        return d.Features({"text": d.Value("string")})

    def row(_, split, i):  # WikiText keeps blank lines and " = heading = " lines; the loader drops blanks
        return {"text": "" if i % 5 == 4 else (f" = {WORDS[i % 10].title()} = \n" if i % 5 == 0 else _text(i, 12) + " .\n")}

    return HubFixture(dataset_id, card, {config: splits}, features, row)


def _plain(columns: tuple[str, ...]):
    def features(_):
        d = _f()
        return d.Features({c: d.Value("string") for c in columns})

    return features


HUB: dict[str, HubFixture] = {f.dataset_id: f for f in (
    HubFixture("openai/gsm8k", "https://huggingface.co/datasets/openai/gsm8k",
               {"main": {"train": 520, "test": 8}}, _plain(("question", "answer")), _gsm8k_row),
    HubFixture("tatsu-lab/alpaca", "https://huggingface.co/datasets/tatsu-lab/alpaca",
               {None: {"train": 200}}, _plain(("instruction", "input", "output", "text")), _alpaca_row),
    HubFixture("mandarjoshi/trivia_qa", "https://huggingface.co/datasets/mandarjoshi/trivia_qa",
               {"rc.nocontext": {"train": 1010, "validation": 8, "test": 8}}, _trivia_features, _trivia_row),
    HubFixture("cais/mmlu", "https://huggingface.co/datasets/cais/mmlu",
               {"all": {"auxiliary_train": 8, "dev": 6, "validation": 8, "test": 8}}, _mmlu_features, _mmlu_row),
    HubFixture("nyu-mll/glue", "https://huggingface.co/datasets/nyu-mll/glue",
               {t: _glue_splits(t, 8) for t in GLUE}, _glue_features, _glue_row),
    _image_fixture("uoft-cs/cifar10", "https://huggingface.co/datasets/uoft-cs/cifar10", "plain_text",
                   {"train": 40, "test": 16}, "img", {"label": CIFAR10}, 32, "RGB"),
    _image_fixture("uoft-cs/cifar100", "https://huggingface.co/datasets/uoft-cs/cifar100", "cifar100",
                   {"train": 40, "test": 16}, "img", {"fine_label": CIFAR100_FINE, "coarse_label": CIFAR100_COARSE},
                   32, "RGB"),
    # ylecun/mnist (config mnist): image (Image, 28x28 grey), label (ClassLabel "0".."9"); train 60k / test 10k.
    _image_fixture("ylecun/mnist", "https://huggingface.co/datasets/ylecun/mnist", "mnist",
                   {"train": 120, "test": 30}, "image", {"label": DIGITS}, 28, "L"),
    # ufldl-stanford/svhn, config cropped_digits: image (32x32 RGB), label (ClassLabel 0-9); train/test/extra.
    _image_fixture("ufldl-stanford/svhn", "https://huggingface.co/datasets/ufldl-stanford/svhn", "cropped_digits",
                   {"train": 120, "test": 30, "extra": 10}, "image", {"label": DIGITS}, 32, "RGB"),
    # Salesforce/wikitext, config wikitext-103-raw-v1: one "text" column (lines), train/validation/test.
    _text_fixture("Salesforce/wikitext", "https://huggingface.co/datasets/Salesforce/wikitext",
                  "wikitext-103-raw-v1", {"train": 60, "validation": 30, "test": 30}),
    # Skylion007/openwebtext (default config): one "text" column (documents), one split, train (8,013,769).
    _text_fixture("Skylion007/openwebtext", "https://huggingface.co/datasets/Skylion007/openwebtext",
                  None, {"train": 1100}),
)}


def write_hub_fixture(root: str | Path, dataset_id: str) -> Path:
    """``<root>/<dataset_id>/``: README.md (configs and their split files) + one parquet file per split."""
    import datasets

    spec = HUB[dataset_id]
    folder = Path(root) / dataset_id
    lines = ["---", "configs:"]
    for config, splits in spec.configs.items():
        name = config or "default"
        lines += [f"- config_name: {name}", "  data_files:"]
        features = spec.features(config)
        for k, (split, n) in enumerate(splits.items()):
            # the version in the file name: datasets caches a local folder by its data-file patterns, not content
            rel = f"{name}/{split}-v{VERSION}-00000-of-00001.parquet"
            (folder / name).mkdir(parents=True, exist_ok=True)
            rows = [spec.row(config, split, i + 10_000 * k) for i in range(n)]  # other rows in every split
            table = datasets.Dataset.from_list(rows, features=features)
            table.to_parquet(str(folder / rel))
            lines += [f"  - split: {split}", f"    path: {rel}"]
    lines += ["---", f"Generated rehearsal fixture in the schema of {spec.card} (data/fixtures.py); not real data."]
    (folder / "README.md").write_text("\n".join(lines) + "\n")
    return folder


# --- speech corpora (folders as released) --------------------------------------------------------------
SAMPLE_RATE = 16_000


def _tone(seed: int, seconds: float = 1.0, freq: float | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    f = freq if freq is not None else 200 + 40 * (seed % 17)
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _wav(path: Path, wave: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")


def _speech_commands(root: Path, per_word: int) -> None:
    # Speech Commands v0.01 as SUPERB KS reads it (v0.02 has the same layout): <word>/<speaker>_nohash_<n>.wav,
    # validation_list.txt / testing_list.txt (relative paths), _background_noise_/*.wav (1-s silence crops).
    # https://huggingface.co/datasets/google/speech_commands (the tarball's layout, README there)
    from data.speech_corpora import KS_WORDS

    valid, test = [], []
    for w, word in enumerate((*KS_WORDS, "bed", "cat")):  # two words outside the 10: the _unknown_ class
        for n in range(per_word):
            rel = f"{word}/{n:04x}abcd_nohash_0.wav"
            _wav(root / rel, _tone(w * 31 + n, freq=150 + 60 * w))
            (valid if n % 3 == 1 else test if n % 3 == 2 else []).append(rel)
    (root / "validation_list.txt").write_text("\n".join(valid) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    _wav(root / "_background_noise_" / "white_noise.wav", _tone(7, seconds=6.0) * 0.1)


def _fluent(root: Path, per_split: int) -> None:
    # Fluent Speech Commands: data/{train,valid,test}_data.csv (index, path, speakerId, transcription, action,
    # object, location), wavs/speakers/<speakerId>/<id>.wav. https://fluent.ai/fluent-speech-commands (README)
    import csv

    intents = [("activate", "lights", "kitchen"), ("deactivate", "music", "none"), ("increase", "heat", "bedroom"),
               ("change language", "Chinese", "none")]
    for s, split in enumerate(("train", "valid", "test")):
        rows = []
        for i in range(per_split):
            action, obj, loc = intents[i % len(intents)]
            spk = f"spk{s}{i % 2}"
            rel = f"wavs/speakers/{spk}/{split}{i:03d}.wav"
            _wav(root / rel, _tone(100 * s + i, freq=200 + 80 * (i % len(intents))))
            rows.append({"": i, "path": rel, "speakerId": spk, "transcription": f"{action} {obj}",
                         "action": action, "object": obj, "location": loc})
        (root / "data").mkdir(parents=True, exist_ok=True)
        with (root / "data" / f"{split}_data.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _voxceleb1(root: Path, speakers: int) -> None:
    # VoxCeleb1 identification: iden_split.txt lines "<1|2|3> id10001/<video>/00001.wav" (1 train, 2 dev,
    # 3 test), wav/<speaker>/<video>/<n>.wav. https://www.robots.ox.ac.uk/~vgg/data/voxceleb/vox1.html
    lines = []
    for k in range(speakers):
        spk = f"id1{k + 1:04d}"
        for n, tag in enumerate(("1", "1", "2", "3")):
            rel = f"{spk}/vid{n % 2}/{n + 1:05d}.wav"
            _wav(root / "wav" / rel, _tone(k * 10 + n, freq=120 + 50 * k))
            lines.append(f"{tag} {rel}")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")


def _iemocap(root: Path, per_session: int) -> None:
    # IEMOCAP: Session<k>/sentences/wav/<dialog>/<utterance>.wav and Session<k>/dialog/EmoEvaluation/<dialog>.txt
    # whose lines read "[start - end]\t<utterance>\t<emotion>\t[V, A, D]" (neu hap exc ang sad fru ...).
    # https://sail.usc.edu/iemocap/iemocap_release.htm (the release's layout)
    emotions = ("neu", "hap", "ang", "sad", "exc", "fru")
    for k in range(1, 6):
        dialog = f"Ses0{k}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for i in range(per_session):
            utt = f"{dialog}_{'FM'[i % 2]}{i:03d}"
            _wav(root / f"Session{k}" / "sentences" / "wav" / dialog / f"{utt}.wav", _tone(k * 100 + i, freq=180 + 70 * (i % 4)))
            lines.append(f"[{i * 2.0:.4f} - {i * 2.0 + 1.0:.4f}]\t{utt}\t{emotions[i % len(emotions)]}\t[2.5000, 2.5000, 2.5000]")
        ev = root / f"Session{k}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        ev.parent.mkdir(parents=True, exist_ok=True)
        ev.write_text("\n".join(lines) + "\n")


SPEECH = {"speech_commands": lambda root: _speech_commands(root, 3), "fluent_speech_commands": lambda root: _fluent(root, 8),
          "voxceleb1": lambda root: _voxceleb1(root, 3), "iemocap": lambda root: _iemocap(root, 12)}


def write_speech_fixture(root: str | Path, task: str) -> Path:
    folder = Path(root) / "speech" / task
    SPEECH[task](folder)
    return folder


# --- the cached set a rehearsal uses ------------------------------------------------------------------------
def fixtures_root(cache_dir: str | Path | None = None) -> Path:
    base = cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                     "efficient-transformers-lab")
    return Path(base) / "fixtures" / f"v{VERSION}"


def ensure_fixtures(names: list[str], cache_dir: str | Path | None = None) -> Path:
    """Write (once) the hub datasets / speech tasks named, atomically per dataset; the mirror root."""
    import shutil

    root = fixtures_root(cache_dir)
    for name in names:
        final = root / ("speech/" + name if name in SPEECH else name)
        if (final / ".complete").is_file():
            continue
        tmp_root = root / f".tmp{os.getpid()}"
        made = write_speech_fixture(tmp_root, name) if name in SPEECH else write_hub_fixture(tmp_root, name)
        (made / ".complete").write_text(json.dumps({"version": VERSION}))
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        made.rename(final)
        shutil.rmtree(tmp_root, ignore_errors=True)
    return root
