"""``twinsparse bench``: the hot-path harness runs on CPU (kernel column "n/a (no CUDA)") and its shape lists are right."""
import math

from accel.bench import resnet18_shapes, resnet50_shapes
from accel.cli import main


def test_resnet_shape_lists():
    # torchvision resnet50: 25,557,032 parameters = 25,502,912 conv/fc weights + 53,120 BN + 1,000 fc bias
    assert sum(math.prod(s) for s in resnet50_shapes()) == 25_502_912
    assert len(resnet50_shapes()) == 54 and resnet50_shapes()[-1] == (1000, 2048)
    s18 = resnet18_shapes()
    assert len(s18) == 21 and s18[0] == (64, 3, 3, 3) and s18[-1] == (10, 512)


def test_bench_quick_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.txt"
    rc = main(["bench", "--quick", "--device", "cpu", "--models", "resnet18", "--repeats", "1", "--batch", "2",
               "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    for path in ("masked SGD-momentum step", "top-k per layer", "top-k global", "N:M 2:4", "RigL drop-and-grow",
                 "DST-EE scores", "running average", "UMG channel scores", "end to end"):
        assert path in text
    assert "n/a (no CUDA)" in text and "bandwidth floor" in text


def test_bench_rejects_bad_density(capsys):
    assert main(["bench", "--quick", "--device", "cpu", "--density", "1.5"]) == 2
    assert "density" in capsys.readouterr().err
