"""The continual-learning paradigm (FoCL / MeRGAN): one conditional generator learns a stream of tasks.

``run`` loops over the tasks of the data's split. For task t:

1. ``module.start_task(t, weights of G after task t-1)``: the frozen previous generator (a reference, rebuilt
   from ``<run>/generators/after_t<t-1>.pt``, never checkpointed) and the task's regulariser;
2. fit on the real images of task t with a fresh Trainer whose ``max_steps`` is (t+1) x
   ``continual.steps_per_task`` (generator steps), continuing from ``<run>/checkpoints/last.ckpt`` (written when
   task t-1 ended, or by a killed run mid-task): weights, both optimizers, the step count, the noise and replay
   streams, the data position;
3. ``<run>/generators/after_t<t>.pt`` (G's weights, the next task's reference), then the evaluation with the
   scoring classifier (trained once on real images of all classes, cached in the user cache): row t of the
   accuracy matrix ``test/acc@after=t<t>,task=t<j>``, ``test/avg_acc@after=t<t>``,
   ``test/forgetfulness@after=t<t>`` (modules/continual/evaluation.py) and the classifier-feature Fréchet
   distance over the classes seen so far ``test/frechet@after=t<t>``; ``results.json`` and
   ``samples/after_t<t>.png`` are written, and ``continual_state.json`` records the finished task.

At the end: ``final/score@measure=avg_acc|forgetfulness|frechet`` (what ``conf/table/focl_table.yaml`` reads)
and ``accuracy_curves.png``. A killed run rerun with the same command continues at the task and step it
reached; a folder whose ``results.json`` lists every task done is finished.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from omegaconf import DictConfig

from experiments.core.config import ConfigError, get, instantiate, plain
from experiments.core.schema import CheckpointSchema, options, opt
from experiments.paradigms.base import Paradigm

SOURCE_NAMES = ("digits", "fashion_mnist", "mnist", "svhn", "cifar10", "hf")
STATE = "continual_state.json"


# --- group schemas -------------------------------------------------------------------------------
@dataclasses.dataclass
class GeneratorSchema:
    yaml: ClassVar[str] = "generator/wgan_gp"
    elsewhere: ClassVar[dict] = {"beta": "generator/cvae"}  # fields only those options set
    closed: ClassVar[bool] = True
    kind: Literal["wgan_gp", "cvae"] = "wgan_gp"
    z_dim: Optional[int] = opt(None, min=1)
    width: Optional[int] = opt(None, min=1)
    n_critic: int = opt(5, min=1)
    gp_weight: float = opt(10.0, min=0)
    acgan_weight: float = opt(1.0, min=0)
    beta: float = opt(1.0, min=0)


@dataclasses.dataclass
class RegularizerSchema:
    yaml: ClassVar[str] = "regularizer/feature"
    elsewhere: ClassVar[dict] = {"pixel_weight": "regularizer/combined", "feature_weight": "regularizer/combined"}  # fields only those options set
    closed: ClassVar[bool] = True
    name: Literal["none", "ewc", "pixel", "feature", "combined"] = "feature"
    weight: float = opt(1.0, min=0)
    pixel_weight: Optional[float] = opt(None, min=0)
    feature_weight: Optional[float] = opt(None, min=0)
    phi: Literal["critic", "classifier", "random"] = "classifier"
    phi_data: Literal["seen", "all"] = "seen"
    phi_checkpoint: Optional[str] = None
    normalize: Literal["none", "grad"] = "none"
    grad_ratio: float = opt(1.0, min=0)


@dataclasses.dataclass
class ContinualDataSchema:
    yaml: ClassVar[str] = "data/continual_digits"
    closed: ClassVar[bool] = True
    source: Literal[SOURCE_NAMES] = "digits"  # type: ignore[valid-type]
    num_classes: int = opt(10, min=1)
    split: Optional[list[list[int]]] = None
    classes_per_task: Optional[int] = opt(2, min=1)
    batch_size: int = opt(32, min=1)
    test_fraction: float = opt(0.2, min=0, below=1)
    train_subset: Optional[int] = opt(None, min=1)
    val_fraction: float = opt(0.1, min=0, below=1)
    val_seed: Optional[int] = None
    data_dir: Optional[str] = "/usr/share/datasets/fashion-mnist/"
    hf_id: Optional[str] = None
    hf_config: Optional[str] = None
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    cache_dir: Optional[str] = None
    num_workers: int = opt(0, min=0)


@dataclasses.dataclass
class ContinualSchema:
    yaml: ClassVar[str] = "paradigm/continual:continual"
    closed: ClassVar[bool] = True
    steps_per_task: int = opt(300, min=1)
    replay_batch: int = opt(64, min=1)
    replay_critic: bool = False
    fisher_batches: int = opt(10, min=1)


@dataclasses.dataclass
class ContinualEvalSchema:
    yaml: ClassVar[str] = "eval/continual"
    closed: ClassVar[bool] = True
    ckpt_path: Optional[str] = None
    metric: str = "val/avg_acc"
    higher_is_better: bool = True
    n_per_class: int = opt(200, min=2)
    classifier_epochs: int = opt(20, min=1)
    classifier_checkpoint: Optional[str] = None
    min_classifier_acc: float = opt(0.9, min=0, max=1)
    samples_per_class: int = opt(8, min=1)


# --- helpers -------------------------------------------------------------------------------------
def task_split(cfg: DictConfig) -> list[tuple[int, ...]]:
    """The validated split from config alone (no data): ``data.split`` or ``data.classes_per_task``."""
    from modules.continual.tasks import TaskSplitError, even_split, validate_split

    data = options(cfg, "data", ContinualDataSchema)
    num_classes, split = int(data.num_classes), data.split
    try:
        if split is None:
            per_task = data.classes_per_task
            if per_task is None:
                raise TaskSplitError("data.split is not set: give a split or data.classes_per_task")
            split = even_split(num_classes, int(per_task))
        return validate_split(split, num_classes, key="data.split")
    except TaskSplitError as err:
        raise ConfigError(str(err)) from None


def cache_dir() -> Path:
    from modules.offline import cache_root

    return cache_root() / "focl"


def _train_cached_classifier(path: Path, data, seed: int, epochs: int, width: int = 32, feature_dim: int = 128,
                             classes=None):
    """A SmallClassifier trained on the real training images (of ``classes`` only when given; seeded, without
    moving the global RNG), kept at ``path`` (written atomically: parallel sweep jobs may train the same one)."""
    import torch

    from modules.continual.evaluation import SmallClassifier, load_classifier, save_classifier, train_classifier

    with torch.random.fork_rng():  # building a classifier (also to load one) draws initial weights
        if path.is_file():
            return load_classifier(path)
        torch.manual_seed(seed)
        model = SmallClassifier(data.image_shape, data.num_classes, width=width, feature_dim=feature_dim)
        train_classifier(model, *classifier_training_data(data, classes), epochs=epochs, seed=seed)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_classifier(model, tmp)
    os.replace(tmp, path)
    return model.eval()


def _load_quietly(path: str, key: str):
    """``load_classifier`` without moving the global RNG (the generator's initial weights come after it)."""
    import torch

    from modules.continual.evaluation import load_classifier

    with torch.random.fork_rng():
        return load_classifier(path, key=key)


def classifier_training_data(data, classes=None):
    """The real training images (the validation carve excluded) of ``classes`` (None: every class)."""
    import torch

    images, labels = data.train
    if classes is None:
        return images, labels
    keep = torch.isin(labels, torch.as_tensor(sorted(classes), dtype=torch.long))
    return images[keep], labels[keep]


def classifier_path(cfg: DictConfig, data, role: str, seed: int, epochs: int, classes=None) -> Path:
    spec = json.dumps({"role": role, "source": data.source, "hf_id": data.hf_id, "shape": data.image_shape,
                       "classes": data.num_classes, "n_train": len(data.train[1]), "seed": seed, "epochs": epochs,
                       "test_fraction": data.test_fraction, "train_subset": data.train_subset,
                       "val_fraction": data.val_fraction, "val_seed": data.val_seed,
                       "trained_on": None if classes is None else sorted(classes)}, sort_keys=True)
    return cache_dir() / f"{role}-{data.source}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}.pt"


def scoring_classifier(cfg: DictConfig, data):
    """The classifier that scores generated samples, and its accuracy on the real test images."""
    from modules.continual.evaluation import classifier_accuracy

    ev = options(cfg, "eval", ContinualEvalSchema)
    given, epochs = ev.classifier_checkpoint, ev.classifier_epochs
    if given:
        model = _load_quietly(given, "eval.classifier_checkpoint")
    else:
        model = _train_cached_classifier(classifier_path(cfg, data, "scorer", cfg.seed, epochs), data, cfg.seed, epochs)
    acc = classifier_accuracy(model, *data.test)
    minimum = ev.min_classifier_acc
    if acc < minimum:
        raise ConfigError(f"eval.classifier_epochs={epochs}: the scoring classifier reaches {acc:.3f} accuracy on "
                          f"real test images, below eval.min_classifier_acc={minimum}; train it longer")
    return model, acc


def phi_classes(cfg: DictConfig, stream, task: int):
    """The classes φ = classifier is trained on for task ``task``: those of tasks 0..task (``phi_data=seen``, the
    default: what the learner has seen so far), or None = every class (``phi_data=all``: leaks future tasks)."""
    return None if options(cfg, "regularizer", RegularizerSchema).phi_data == "all" else tuple(stream.seen_classes(task))


def phi_classifier(cfg: DictConfig, data, task: int):
    """φ = a second classifier (other seed, narrower), so the regulariser never sees the scorer itself; trained
    on the real training images of ``phi_classes(cfg, data.stream, task)``."""
    given = options(cfg, "regularizer", RegularizerSchema).phi_checkpoint
    if given:
        return _load_quietly(given, "regularizer.phi_checkpoint")
    epochs = options(cfg, "eval", ContinualEvalSchema).classifier_epochs
    classes = phi_classes(cfg, data.stream, task)
    path = classifier_path(cfg, data, "phi", cfg.seed + 1, epochs, classes)
    return _train_cached_classifier(path, data, cfg.seed + 1, epochs, width=16, feature_dim=64, classes=classes)


def uses_phi_classifier(cfg: DictConfig) -> bool:
    reg = options(cfg, "regularizer", RegularizerSchema)
    return reg.name in ("feature", "combined") and reg.phi == "classifier"


def save_tensor_file(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- pictures ------------------------------------------------------------------------------------
def sample_grid(G, classes, per_class: int, seed: int, path: Path, title: str) -> Path:
    """One row of ``per_class`` generated images per class (fixed noise)."""
    from experiments.results.files import pyplot

    plt = pyplot()

    from modules.continual.evaluation import generate

    x, _ = generate(G, classes, per_class, seed)
    x = ((x.clamp(-1, 1) + 1) / 2).numpy()  # (N, C, H, W) in [0, 1]
    n, c, h, w = x.shape
    grid = x.reshape(len(classes), per_class, c, h, w).transpose(0, 3, 1, 4, 2).reshape(len(classes) * h,
                                                                                      per_class * w, c)
    fig, ax = plt.subplots(figsize=(max(per_class * 0.6, 3), max(len(classes) * 0.6, 2)))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.set_yticks([(i + 0.5) * h for i in range(len(classes))], [str(k) for k in classes])
    ax.set_xticks([])
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def accuracy_curves(acc, path: Path) -> Path:
    """Accuracy on each task j (one line) after learning tasks j..T-1."""
    from experiments.results.files import pyplot

    plt = pyplot()

    T = acc.shape[0]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for j in range(T):
        ax.plot(range(j, T), acc[j:, j], marker="o", label=f"task t{j}")
    ax.set_xlabel("after learning task")
    ax.set_xticks(range(T), [f"t{t}" for t in range(T)])
    ax.set_ylabel("accuracy of generated samples")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# --- the paradigm --------------------------------------------------------------------------------
class ContinualParadigm(Paradigm):
    name = "continual"

    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        return {"generator": GeneratorSchema, "regularizer": RegularizerSchema, "data": ContinualDataSchema,
                "continual": ContinualSchema, "eval": ContinualEvalSchema}

    def validate(self, cfg: DictConfig) -> None:
        from data.continual_sources import FASHION_MNIST_DIR, FASHION_MNIST_FILES, SOURCES

        task_split(cfg)
        data = options(cfg, "data", ContinualDataSchema)
        reg = options(cfg, "regularizer", RegularizerSchema)
        generator = options(cfg, "generator", GeneratorSchema)
        source = data.source
        info = SOURCES[source]
        if info.num_classes is not None and info.num_classes != int(data.num_classes):
            raise ConfigError(f"data.num_classes={data.num_classes} does not match data.source={source} "
                              f"({info.num_classes} classes)")
        if source == "fashion_mnist":
            folder = Path(str(data.data_dir or FASHION_MNIST_DIR))
            missing = [n for n in FASHION_MNIST_FILES if not (folder / n).is_file()]
            if missing:
                raise ConfigError(f"data.data_dir={str(folder)!r} lacks the Fashion-MNIST file {missing[0]}: "
                                  "install it with `apt-get install dataset-fashion-mnist` or point data.data_dir at it")
        if source == "hf" and not data.hf_id:
            raise ConfigError("data.source=hf needs data.hf_id (an HF dataset id)")
        if reg.name in ("feature", "combined") and reg.phi == "critic" and generator.kind == "cvae":
            raise ConfigError("regularizer.phi=critic but generator=cvae has no critic; valid choices here: "
                              "classifier, random")
        if data.val_fraction <= 0:
            raise ConfigError(f"data.val_fraction={data.val_fraction}: the validation carve must be > 0 "
                              "(selection reads val/*); valid: 0 < data.val_fraction < 1")
        if reg.normalize == "grad":
            ratio = float(reg.grad_ratio)
            if not ratio > 0 or ratio == float("inf"):
                raise ConfigError(f"regularizer.grad_ratio={ratio}: valid: a finite number > 0 (the regulariser's "
                                  "gradient norm as a multiple of the GAN loss's)")
            if generator.kind != "wgan_gp":
                raise ConfigError("regularizer.normalize=grad is implemented for generator=wgan_gp only; valid "
                                  "choices with generator=cvae: none")
        given = {"regularizer.phi_checkpoint": reg.phi_checkpoint,
                 "eval.classifier_checkpoint": options(cfg, "eval", ContinualEvalSchema).classifier_checkpoint}
        for key, path in given.items():
            if path and not Path(str(path)).expanduser().is_file():
                raise ConfigError(f"{key}={path!r}: no such file (a classifier written by "
                                  "modules/continual/evaluation.py: save_classifier)")
        need = ("generator", "critic") if generator.kind == "wgan_gp" else ("generator",)
        optimizer = get(cfg, "optimizer")
        if not isinstance(optimizer, DictConfig) or "_target_" in optimizer or any(
                not isinstance(optimizer.get(n), DictConfig) or "_target_" not in optimizer[n] for n in need):
            raise ConfigError(f"optimizer: generator.kind={generator.kind} needs the named optimizers "
                              f"{', '.join(need)} (each a factory, e.g. optimizer=gan_adam)")
        if get(cfg, "task") == "eval":
            raise ConfigError("task=eval is not an option of paradigm=continual (a train run evaluates after every "
                              "task); valid choices: train, report")

    def build(self, cfg: DictConfig) -> tuple[Any, Any]:
        from modules.continual.tasks import TaskSplitError
        from modules.continual_module import ContinualGAN

        generator = options(cfg, "generator", GeneratorSchema)
        continual = options(cfg, "continual", ContinualSchema)
        n_critic = generator.n_critic if generator.kind == "wgan_gp" else 1
        data = instantiate(cfg.data, seed=cfg.seed, batches_per_step=n_critic,
                           steps_per_task=int(continual.steps_per_task))
        try:
            data.setup()
        except (TaskSplitError, FileNotFoundError) as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        optimizer = {name: instantiate(node) for name, node in cfg.optimizer.items()}
        module = ContinualGAN(data.image_shape, data.num_classes, data.stream.tasks, kind=generator.kind,
                              z_dim=generator.z_dim, width=generator.width, n_critic=n_critic,
                              gp_weight=generator.gp_weight, acgan_weight=generator.acgan_weight,
                              beta=generator.beta,
                              regularizer=dataclasses.asdict(options(cfg, "regularizer", RegularizerSchema)),
                              replay_batch=int(continual.replay_batch),
                              replay_critic=bool(continual.replay_critic),
                              fisher_batches=int(continual.fisher_batches), seed=int(cfg.seed),
                              optimizer=optimizer, scheduler=plain(cfg.scheduler))
        return module, data

    # --- the run: one task after another ---------------------------------------------------------
    def finished_results(self, ctx) -> dict[str, Any] | None:
        done = ctx.finished_results()
        if done is not None and done.get("tasks/done") == done.get("tasks/total"):
            return done
        return None  # results.json of a run killed between tasks: it continues

    def run(self, ctx) -> float | None:
        import numpy as np
        import torch

        from experiments.results.files import write_json, write_results
        from modules.continual.evaluation import (average_accuracy, classifier_frechet, forgetfulness,
                                                  new_accuracy_matrix, per_class_accuracy, task_accuracies)
        from modules.submodel import SubModel, metric_key

        cfg, run_dir = ctx.cfg, ctx.run_dir
        module, data = self.prepare(ctx)
        scorer, scorer_acc = scoring_classifier(cfg, data)
        ev, reg = options(cfg, "eval", ContinualEvalSchema), options(cfg, "regularizer", RegularizerSchema)
        stream, steps = data.stream, int(options(cfg, "continual", ContinualSchema).steps_per_task)
        T, n_eval, seed = len(stream), int(ev.n_per_class), int(cfg.seed)
        resume = options(cfg, "checkpoint", CheckpointSchema).resume
        state_path, gen_dir = run_dir / STATE, run_dir / "generators"
        state = json.loads(state_path.read_text()) if resume and state_path.is_file() else {"done": 0, "metrics": {}}
        ctx.resume_checkpoint()  # a folder holding a run of another config is refused in one line
        ctx.remember_config()
        metrics: dict[str, Any] = dict(state["metrics"])
        # two accuracy matrices: test (fixed noise, Fréchet against real test images) and validation (other
        # noise, Fréchet against the carve of the training images): selection reads val/*, tables report test/*
        acc = {split: new_accuracy_matrix(T) for split in ("val", "test")}
        for split, t in ((split, t) for split in acc for t in range(state["done"])):
            for j in range(t + 1):
                acc[split][t, j] = metrics[metric_key(f"{split}/acc", SubModel(()), {"after": f"t{t}", "task": f"t{j}"})]
        metrics.update({"test/classifier_acc": scorer_acc, "tasks/total": T, "tasks/done": state["done"],
                        **data.carve_info(), "regularizer/phi_data": reg.phi_data})
        trained_here = False
        for t in range(state["done"], T):
            data.set_task(t)
            previous = torch.load(gen_dir / f"after_t{t - 1}.pt", map_location="cpu", weights_only=True) if t else None
            phi = phi_classifier(cfg, data, t) if t and uses_phi_classifier(cfg) else None
            module.start_task(t, previous, phi_classifier=phi)
            ckpt = ctx.last_checkpoint if ctx.last_checkpoint.is_file() and (resume or trained_here) else None
            if ckpt is not None and not trained_here:
                blob = torch.load(ckpt, map_location="cpu", weights_only=True)
                print(f"resuming from {ckpt} (task t{t} of {T}, generator step {blob['global_step']} of {steps * T})")
            print(f"task t{t}: classes {list(stream[t])}, generator steps {t * steps}..{(t + 1) * steps}")
            trainer = ctx.trainer(max_steps=(t + 1) * steps)
            trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None,
                        weights_only=True)
            trained_here = True
            if not trainer.is_global_zero:
                continue
            save_tensor_file({k: v.detach().cpu() for k, v in module.G.state_dict().items()},
                             gen_dir / f"after_t{t}.pt")
            # --- evaluation after task t -------------------------------------------------------
            G, seen, after = module.G, stream.seen_classes(t), {"after": f"t{t}"}
            for split, noise in (("test", seed), ("val", seed + 1_000_003)):  # val: its own noise and real images
                row = task_accuracies(per_class_accuracy(G, scorer, seen, n_eval, seed=noise), stream.tasks[: t + 1])
                acc[split][t, : t + 1] = row
                for j, value in enumerate(row):
                    metrics[metric_key(f"{split}/acc", SubModel(()), {**after, "task": f"t{j}"})] = value
                metrics[metric_key(f"{split}/avg_acc", SubModel(()), after)] = average_accuracy(acc[split], t)
                metrics[metric_key(f"{split}/forgetfulness", SubModel(()), after)] = forgetfulness(acc[split], upto=t + 1)
                metrics[metric_key(f"{split}/frechet", SubModel(()), after)] = classifier_frechet(
                    G, scorer, *getattr(data, split), classes=seen, n_per_class=n_eval, seed=noise + 1)
            row = acc["test"][t, : t + 1]
            metrics["tasks/done"] = t + 1
            sample_grid(G, seen, int(ev.samples_per_class), seed, run_dir / "samples" / f"after_t{t}.png",
                        f"after task t{t} ({reg.name})")
            write_json(state_path, {"done": t + 1, "metrics": metrics})  # results.json only when every task is done
            print(f"after task t{t}: " + "  ".join(f"t{j} {v:.3f}" for j, v in enumerate(row))
                  + f"  | avg {metrics[metric_key('test/avg_acc', SubModel(()), after)]:.3f}"
                  + f" (val {metrics[metric_key('val/avg_acc', SubModel(()), after)]:.3f})")
        if trained_here and not trainer.is_global_zero:
            return None
        for split, prefix in (("test", "final/score"), ("val", "final/val/score")):
            final = {"avg_acc": average_accuracy(acc[split]), "forgetfulness": forgetfulness(acc[split]),
                     "frechet": metrics[metric_key(f"{split}/frechet", SubModel(()), {"after": f"t{T - 1}"})]}
            for name, value in final.items():
                metrics[metric_key(prefix, SubModel(()), {"measure": name})] = value
            metrics[f"{split}/avg_acc"] = final["avg_acc"]
        acc, final = acc["test"], {name: metrics[metric_key("final/score", SubModel(()), {"measure": name})]
                                   for name in ("avg_acc", "forgetfulness", "frechet")}
        accuracy_curves(acc, run_dir / "accuracy_curves.png")
        table = write_results(run_dir, metrics, ())
        print(f"\nResults ({run_dir}):\n{table}")
        print("accuracy matrix (row = after task t, column = task j):")
        print("\n".join("  ".join("  -  " if np.isnan(v) else f"{v:.2f} " for v in r) for r in acc))
        print(f"test: average accuracy {final['avg_acc']:.3f}  forgetfulness {final['forgetfulness']:.3f}  "
              f"Fréchet distance {final['frechet']:.2f}  (validation average accuracy {metrics['val/avg_acc']:.3f})")
        return metrics.get(ev.metric, metrics["val/avg_acc"])
