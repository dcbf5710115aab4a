"""What a run's fields imply, as methods of ``RunConfig``: the learning-rate schedule and the DST
window the method's paper uses when the fields leave them unset, the AC/DC phase plan, the initial
density, and the size of the training data (known from the config alone for the built-in datasets)."""
from __future__ import annotations

from typing import Optional

from .datasets import CIFAR

MNIST5K_PER_CLASS, MNIST5K_CLASSES = 500, 10
CIFAR_TRAIN = 50000


class RunDerived:
    """Mixed into ``reference.config.RunConfig``; reads only its fields."""

    def acdc_phase_plan(self) -> list:
        """The AC/DC phases of this run (reference.acdc_ops.Phase list; method 'acdc' only)."""
        from .acdc_ops import acdc_phases
        from .methods.acdc import LENGTH_KEYS, acdc_lengths
        return acdc_phases(self.epochs, **acdc_lengths(self.epochs, plan=self.acdc_plan,
                                                       **{k: getattr(self, f"acdc_{k}") for k in LENGTH_KEYS}))

    # ------------------------------------------------------------ defaults that depend on the method
    def lr_schedule_name(self) -> str:
        """``lr_schedule``, or when unset the schedule the method's paper trains with (docs/methods.md
        §1.8): AC/DC ([TH] App. A.2) and CrAM ([TH] §5.4) warm up linearly then decay with a cosine;
        Sparse Cocktail uses CyclicCosineDecay ([SC] Tables 5-6); Sup-tickets decays 10x at 1/2 and
        3/4 of training ([ST] §4.1); everything else a cosine (DST-EE, and the project's default)."""
        if self.lr_schedule is not None:
            return self.lr_schedule
        if self.method == "acdc" or self.procedure == "cram":
            return "warmup_cosine"
        if self.procedure == "cocktail":
            return "cyclic_cosine"
        if self.suptickets:
            return "step"
        return "cosine"

    def lr_plan(self, steps_per_epoch: int):
        """The ``reference.schedules.LRSchedule`` of this run for ``steps_per_epoch`` iterations per epoch."""
        from .schedules import LRSchedule
        return LRSchedule(name=self.lr_schedule_name(), steps_per_epoch=int(steps_per_epoch),
                          warmup_epochs=self.lr_warmup_epochs, cycle_init_epochs=self.lr_cycle_init_epochs,
                          cycle_interval=self.lr_cycle_interval, min_lr=self.lr_min, restart_lr=self.lr_restart)

    def dst_window(self) -> tuple:
        """(t_end_fraction, fraction_schedule) of a drop-and-grow method: the fields when set, else
        the method's paper default. DST-EE Alg. 1 updates "if t (mod ΔT) = 0 and t < T_end" with T_end
        the total number of iterations and a fixed k_i per update: (1.0, 'constant'). RigL (and SET,
        SNFS, GraNet here) stop at 0.75 T with the cosine-decayed drop fraction: (0.75, 'cosine')."""
        t_end, sched = (1.0, "constant") if self.method == "dst_ee" else (0.75, "cosine")
        return (t_end if self.t_end_fraction is None else self.t_end_fraction,
                sched if self.fraction_schedule is None else self.fraction_schedule)

    def known_n_train(self) -> Optional[int]:
        """``n_train()`` when it is known without reading files, else None (imagefolder, tensors)."""
        if self.train_budget is not None:
            return self.train_budget
        return self.full_train_size()

    def full_train_size(self) -> Optional[int]:
        """The whole training split of the dataset when known without reading files."""
        if self.dataset == "mnist5k":
            return MNIST5K_CLASSES * (MNIST5K_PER_CLASS - self.test_per_class - self.holdout_per_class)
        if self.dataset in CIFAR:
            return CIFAR_TRAIN - CIFAR[self.dataset][4] * self.holdout_per_class
        if self.dataset == "synthetic":
            return self.synthetic_train
        return None

    def n_classes(self) -> Optional[int]:
        """The number of classes when known without reading files, else None."""
        return {"mnist5k": MNIST5K_CLASSES, "synthetic": self.synthetic_classes,
                **{k: v[4] for k, v in CIFAR.items()}}.get(self.dataset)

    def n_train(self) -> int:
        """The number of training samples: ``train_budget``, or the whole training split of the dataset
        (imagefolder and tensors: read from data_root)."""
        known = self.known_n_train()
        if known is not None:
            return known
        from .datasets import train_size
        return train_size(self)

    def initial_density(self) -> float:
        """The density of the initial masks: GraNet starts at ``init_density``, GMP and AC/DC dense, others
        at ``density``."""
        return {"granet": self.init_density, "gmp": 1.0, "acdc": 1.0}.get(self.method, self.density)
