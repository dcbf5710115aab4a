"""AC/DC's two outputs as a procedure over an engine (``reference.engine`` / ``accel.engine``):
[TH] §3.3.2, §3.4.1, App. A.2.1; docs/methods.md §6.2, §1.14.

    phases <- the AC/DC plan of cfg (W, C1, D1, ..., C_n, D_last, C_last; RunConfig.acdc_plan)
    train the whole AC/DC run (method 'acdc'); keep theta_dense = the network at the end of D_last
        (snapshot at epoch C_last.start: "the last dense checkpoint obtained during alternation")
    SPARSE model = the network at the end of training (end of C_last)
    DENSE model  = theta_dense fine-tuned densely for |C_last| epochs "using the same training
        hyper-parameters used for the final compressed phase": the LR schedule entered at epoch
        C_last.start (lr_offset), i.e. C_last replaced by dense training
    records: one per phase of the AC/DC run (test metrics at the phase's end), one for the
        dense-finetuned model, and the outputs record: the sparse model's test metrics (so a
        results table reads the sparse model) with the dense model's, the dense snapshot's before
        fine-tuning, sparse/dense sample agreement and prediction cross-entropy (docs/methods.md §1.14, both
        directions, dense as the reference first), the change between consecutive compression
        masks (docs/methods.md §1.14) and the fraction of exactly-zero prunable weights of the dense model
        ([TH] Table A.1).

The fine-tune starts a fresh optimizer (momentum 0): an engine network holds weights and BN
buffers only; the thesis does not say whether the optimizer state is carried over.
"""
from __future__ import annotations

from dataclasses import replace

from .procedure_tools import test_metrics
from .stages import Stages


def run_acdc(engine, cfg, on_record=None, stages=None) -> dict:
    """AC/DC on ``engine``; returns both models, the final masks, the records, the mask updates
    and the per-epoch histories of the AC/DC run and of the dense fine-tune. ``stages``
    (``reference.stages.Stages``): the AC/DC run and the fine-tune are resumable stages (epochs
    checkpointed)."""
    ops, split = engine.ops, engine.split
    test = (split.x_test, split.y_test)
    spe = -(-len(split.y_train) // cfg.batch_size)
    phases = cfg.acdc_phase_plan()
    last = phases[-1]
    stages = Stages.attach(stages, on_record)
    emit = stages.emit

    def acdc_run(net, **kw):
        out = engine.train(replace(cfg, procedure="train", lr_schedule=cfg.lr_schedule_name()).validate(), net, None,
                           snapshot_epoch=last.start, **kw)
        history = out["history"]
        for i, p in enumerate(phases):
            h = history[p.end - 1]
            emit({"state": i + 1, "phase": p.name, "kind": p.kind, "start_epoch": p.start, "end_epoch": p.end,
                  "density": h["density"], "train_loss": h["train_loss"],
                  **{k: h[k] for k in ("test_acc", "test_nll", "test_ece")},
                  "time_s": sum(r["epoch_time"] for r in history[p.start:p.end])})
        return out

    def finetune(snapshot, **kw):
        t0 = engine.clock()
        dense_cfg = replace(cfg, procedure="train", method="dense", density=1.0, epochs=last.length,
                            lr_schedule=cfg.lr_schedule_name()).validate()   # AC/DC's schedule, entered at C_last
        ft = engine.train(dense_cfg, snapshot, None, lr_offset=last.start * spe, **kw)
        emit({"state": len(phases) + 1, "phase": "dense_finetune", "kind": "dense", "start_epoch": last.start,
              "end_epoch": last.end, "density": 1.0, "train_loss": ft["history"][-1]["train_loss"],
              **test_metrics(engine, ft["net"], test), "time_s": engine.clock() - t0})
        return ft

    net = engine.init_net(cfg, split.x_train.shape[1], int(split.y_train.max()) + 1)  # also on resume: the model
    out = stages.train("acdc", lambda **kw: acdc_run(net, **kw))
    sparse, masks, history, snapshot = out["net"], out["final_masks"], out["history"], out["snapshot"]
    ft = stages.train("dense_finetune", lambda **kw: finetune(snapshot, **kw))
    dense = ft["net"]
    dense_scores = test_metrics(engine, dense, test)

    t0 = engine.clock()
    z_sparse, z_dense = engine.predict(sparse, split.x_test), engine.predict(dense, split.x_test)
    names = engine.prunable(dense)
    changes = [u["compressed_mask_change"] for u in out["updates"] if "compressed_mask_change" in u]
    emit({"state": len(phases) + 2, "phase": "outputs", "kind": "sparse", "density": float(ops.total_density(masks)),
          **test_metrics(engine, sparse, test),
          **{f"dense_{k}": v for k, v in dense_scores.items()},
          **{f"dense_before_finetune_{k}": v for k, v in test_metrics(engine, snapshot, test).items()},
          "sample_agreement": ops.sample_agreement(z_sparse, z_dense),
          "cross_entropy_dense_sparse": ops.prediction_cross_entropy(z_dense, z_sparse),
          "cross_entropy_sparse_dense": ops.prediction_cross_entropy(z_sparse, z_dense),
          "compressed_mask_changes": changes,
          "mean_compressed_mask_change": sum(changes) / len(changes) if changes else None,
          "dense_zero_fraction": ops.zero_fraction({n: dense[n] for n in names}),
          "time_s": engine.clock() - t0})
    return {"net": sparse, "sparse_net": sparse, "dense_net": dense, "dense_snapshot": snapshot, "masks": masks,
            "phases": phases, "records": stages, "updates": out["updates"], "history": history,
            "dense_history": ft["history"]}
