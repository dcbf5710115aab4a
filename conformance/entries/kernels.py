"""The CUDA kernel variants (accel/kernels/*.cu) of the hot-path operators, forced.

On a CUDA device with CuPy the accel operators already dispatch to the kernels, so the ordinary
entries check them there; these entries additionally run each operator inside
``accel.kernels.require()``, where a silent fallback to torch is an error, so a kernel that is
skipped by accident cannot pass as torch. They carry the tag ``cuda_kernel``: the generic test runs
them on the CUDA device only, marks them ``gpu`` (deselected by default; ``pytest -m gpu``), and
skips them with the reason when CuPy or the device is missing. Inputs are the same hypothesis
strategies as the ordinary entries (adversarial ties included); comparisons are the same rules.
"""
from hypothesis import strategies as st

import twinsparse.accel.cocktail_ops as ACO
import twinsparse.accel.dst as AD
import twinsparse.accel.masks as AM
import twinsparse.accel.merge as AMG
import twinsparse.accel.optim as AO
import twinsparse.accel.topk as AT
import twinsparse.reference.cocktail_ops as RCO
import twinsparse.reference.dst as RD
import twinsparse.reference.masks as RM
import twinsparse.reference.merge as RMG
import twinsparse.reference.optim as RO
import twinsparse.reference.topk as RT
from twinsparse.accel import kernels
from twinsparse.conformance.entries import cocktail as E_cocktail
from twinsparse.conformance.entries.common import quiet
from twinsparse.conformance.entries import dst as E_dst
from twinsparse.conformance.entries import masks as E_masks
from twinsparse.conformance.entries import merge as E_merge
from twinsparse.conformance.entries import optim as E_optim
from twinsparse.conformance.entries import topk as E_topk
from twinsparse.conformance.registry import register

KERNEL_TAG = "cuda_kernel"


def _forced(fn):
    def run(*args, **kwargs):
        with kernels.require():
            return fn(*args, **kwargs)
    run.__name__ = f"kernel_{getattr(fn, '__name__', 'op')}"
    return run


def _reg(name, ref, acc, strategy, **kw):
    register(f"kernel.{name}", ref, _forced(acc), strategy, tags=(KERNEL_TAG,), **kw)


# topk.cu: radix select, single tensor, per layer (segmented), global, among candidates
_reg("topk_mask", RT.topk_mask, AT.topk_mask, E_topk._topk_args)
_reg("topk_masks_per_layer", RT.topk_masks_per_layer, AT.topk_masks_per_layer, E_topk._per_layer_args)
_reg("topk_masks_global", RT.topk_masks_global, AT.topk_masks_global, E_topk._global_args)
_reg("topk_within", RT.topk_within, AT.topk_within, E_dst._topk_within_args)
_reg("dst.segmented_topk_within", E_dst.ref_segmented_topk_within,
     lambda *a, **k: AD.segmented_topk_within(*a, strategy="kernel", **k), E_dst._segmented_args)
# drop / grow of SET, RigL, DST-EE: two segmented selections (the grow among the post-drop inactive)
_reg("dst.drop", RD.drop, AD.drop, E_dst._drop_args)
_reg("dst.grow", RD.grow, AD.grow, E_dst._grow_args)
_reg("dst.drop_and_grow", RD.drop_and_grow, AD.drop_and_grow, E_dst._drop_and_grow_args)
_reg("dst.prune_to_count", RD.prune_to_count, AD.prune_to_count, E_dst._prune_to_count_args)
# dst.cu: DST-EE scores for every layer in one launch
_reg("dst.dst_ee_scores", RD.dst_ee_scores, AD.dst_ee_scores, E_dst._dst_ee_args)
# nm_mask.cu: one tensor, and every layer of a model in one launch (indivisible layers left dense)
_reg("nm_mask", RM.nm_mask, AM.nm_mask, E_masks._nm_mask_args)
_reg("nm_masks", quiet(RM.nm_masks), quiet(AM.nm_masks), E_masks._nm_masks_args)
# masked_sgd.cu
_reg("masked_sgd_step", RO.masked_sgd_step, AO.masked_sgd_step, E_optim._sgd_args,
     compare=E_optim._compare_with_off_mask_zero)
_reg("masked_sgd_step_all", RO.masked_sgd_step_all, AO.masked_sgd_step_all, E_optim._sgd_all_args)
# merge.cu: Sup-tickets running average, re-prune (top-k), UMG channel scores
_reg("superpose_cia", RMG.superpose_cia, AMG.superpose_cia, E_merge._superpose_cia_args)
_reg("reprune", RMG.reprune, AMG.reprune, E_merge._reprune_args)
_reg("cocktail.umg_channel_scores", RCO.umg_channel_scores, ACO.umg_channel_scores, E_cocktail._scores_args)


# every layer's UMG scores in one launch: the accel operator (a list of layers) and its twin, the
# reference's per-layer scores; registered here as an ordinary entry too (every device)
def _umg_all_ref(ws, masks_u, masks_nm, beta):
    return [RCO.umg_channel_scores(w, mu, mnm, beta) for w, mu, mnm in zip(ws, masks_u, masks_nm)]


@st.composite
def _umg_all_args(draw, dtype):
    layers = [draw(E_cocktail._umg_layer(dtype)) for _ in range(draw(st.integers(1, 4)))]
    return tuple([lay[i] for lay in layers] for i in range(3)), {"beta": draw(E_cocktail._beta())}


register("cocktail.umg_channel_scores_all", _umg_all_ref, ACO.umg_channel_scores_all, _umg_all_args,
         notes="[SC] §3.4 scores of every layer; mask_nm entries None = all-ones")
_reg("cocktail.umg_channel_scores_all", _umg_all_ref, ACO.umg_channel_scores_all, _umg_all_args)
# Sparse Cocktail's channel masks: one score launch for every layer, then one segmented top-k chain
_reg("cocktail.umg_channel_masks", RCO.umg_channel_masks, ACO.umg_channel_masks, E_cocktail._masks_args)
