"""N:M compression inside CrAM and AC/DC runs along each layer's reduction dimension, which is
dim 0 of a ConvTranspose weight [in, out, *k] (dim 1 of Linear and Conv weights)."""
import torch
import torch.nn as nn

from twinsparse.accel import cram_ops as AC
from twinsparse.accel.cram_optimizer import CrAM
from twinsparse.accel.prunable import reduction_dims
from twinsparse.reference.cram_ops import nm_compression


def _model():
    torch.manual_seed(0)
    # ConvTranspose weight [8, 6, 2, 2]: groups of 4 fit dim 0 (8 inputs) but not dim 1 (6 outputs)
    return nn.Sequential(nn.ConvTranspose2d(8, 6, 2), nn.Flatten(), nn.Linear(6 * 4 * 4, 8))


def _two_of_four_along(mask: torch.Tensor, dim: int) -> bool:
    moved = mask.movedim(dim, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // 4, 4)
    return bool((groups.sum(-1) == 2).all())


def test_cram_compresses_a_conv_transpose_along_its_input_channels():
    model = _model()
    opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=0.1), ["nm:2:4"], rho=0.05)
    assert opt._nm_axis == {"0.weight": 0, "2.weight": 1} == reduction_dims(model)
    params = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    out, masks = AC.compress(params, nm_compression(2, 4), nm_axis=opt._nm_axis)
    assert _two_of_four_along(masks["0.weight"], 0) and _two_of_four_along(masks["2.weight"], 1)
    assert torch.equal(out["0.weight"] != 0, masks["0.weight"])


def test_cram_step_with_nm_runs_on_a_conv_transpose_model():
    model = _model()
    opt = CrAM(model, torch.optim.SGD(model.parameters(), lr=0.1), ["nm:2:4"], rho=0.05)
    x, y = torch.randn(4, 8, 3, 3), torch.randint(0, 8, (4,))
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_acdc_nm24_phases_group_a_conv_transpose_along_its_input_channels():
    from twinsparse.accel import Sparsifier
    from twinsparse.accel.methods import ACDC
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = ACDC(density=0.5, distribution="nm24", total_epochs=4, steps_per_epoch=1, warmup=1, compressed=1,
                  decompressed=1, final_decompressed=1, final_compressed=1)
    sp = Sparsifier(model, opt, density=0.5, method=method)
    assert sp.method.nm_axis == {"0.weight": 0, "2.weight": 1} and method.nm_axis == "reduction"
    x, y = torch.randn(4, 8, 3, 3), torch.randint(0, 8, (4,))
    for _ in range(2):                       # t = 1 dense warm-up, t = 2 enters the first compressed phase
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        sp.step()
    masks = {n: m for n, m in sp.masks.items()}
    assert _two_of_four_along(masks["0.weight"], 0) and _two_of_four_along(masks["2.weight"], 1)
    assert torch.equal(model[0].weight != 0, masks["0.weight"])
