"""Sparse Cocktail's co-training SGD step ([SC] §3.5; reference/cocktail_step.py): a dense step (no mask)
or a sparse step that moves only the entries on the mask (weights and momentum), off-mask entries kept
bit-for-bit. Compared as arithmetic (dtype tolerance); the off-mask entries are copies, hence exact."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import twinsparse.accel.cocktail_step as A
import twinsparse.reference.cocktail_step as R
from twinsparse.conformance.registry import register
from twinsparse.conformance.strategies import scores, shapes


@st.composite
def _step_args(draw, dtype):
    shape = draw(shapes(1, 4, 1, 6))
    w, g, buf = (draw(scores(shape, dtype)) for _ in range(3))
    if draw(st.booleans()):
        buf = np.zeros(shape, dtype)                      # the first step after a rewind
    mask = None if draw(st.integers(0, 2)) == 0 else draw(hnp.arrays(np.bool_, shape))
    momentum = draw(st.sampled_from([0.0, 0.9, 0.5]))
    hp = dict(lr=draw(st.sampled_from([0.1, 0.05, 0.0])), momentum=momentum,
              weight_decay=draw(st.sampled_from([0.0, 1e-4, 5e-4])),
              nesterov=momentum > 0 and draw(st.booleans()))
    return (w, g, mask, buf), hp


register("cocktail.cotrain_sgd_step", R.cotrain_sgd_step, A.cotrain_sgd_step, _step_args,
         notes="dense-pivot co-training step: dense (mask None) or only the mask's entries move")
