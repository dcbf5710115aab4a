"""``twinsparse bench`` runs on the CPU (--quick) and writes what it promises: the log it printed
and a JSON with every ratio key, the device and the versions."""
import json
import math

from twinsparse.accel.bench import RATIO_KEYS, resnet18_shapes, resnet50_shapes
from twinsparse.accel.cli import main
from twinsparse.accel.models import ResNet50


def test_resnet_shape_lists():
    # torchvision resnet50: 25,557,032 parameters = 25,502,912 conv/fc weights + 53,120 BN + 1,000 fc bias
    assert sum(math.prod(s) for s in resnet50_shapes()) == 25_502_912
    assert len(resnet50_shapes()) == 54 and resnet50_shapes()[-1] == (1000, 2048)
    assert [tuple(p.shape) for p in ResNet50().parameters() if p.dim() > 1] == resnet50_shapes()
    assert sum(p.numel() for p in ResNet50().parameters()) == 25_557_032
    s18 = resnet18_shapes()
    assert len(s18) == 21 and s18[0] == (64, 3, 3, 3) and s18[-1] == (10, 512)


def test_bench_quick_runs_on_cpu_and_writes_the_log_and_the_json(tmp_path, capsys, monkeypatch):
    from twinsparse.accel import flat
    monkeypatch.setattr(flat, "CPU_PATHS", False)      # count CUDA's torch path (one sync per update)
    rc = main(["bench", "--quick", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path),
               "--sections", "step", "update", "e2e", "hotpaths"])
    assert rc == 0
    printed = capsys.readouterr().out
    logs, jsons = list(tmp_path.glob("*.log")), list(tmp_path.glob("*.json"))
    assert len(logs) == 1 and len(jsons) == 1 and logs[0].stem == jsons[0].stem
    assert logs[0].read_text() in printed
    data = json.loads(jsons[0].read_text())
    assert data["device"].startswith("CPU") and data["torch"] and data["device_type"] == "cpu"
    for key in RATIO_KEYS:
        assert key in data
    cpu_only = {"quickstart_cuda_over_cpu", "nm_8192_fraction_of_copy_bw"}       # need a GPU / the 8192 size
    for key in set(RATIO_KEYS) - cpu_only:
        assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, key
    assert data["quickstart_cuda_over_cpu"] is None
    assert data["rows"]["step_sgd"]["ours_syncs"] == 0 and data["rows"]["rigl_update"]["ours_syncs"] == 1
    for section in ("[step] SGD", "[step] ADAMW", "[update]", "[e2e]", "[hot paths]", "copy bandwidth"):
        assert section in printed


def test_bench_rejects_bad_arguments(capsys):
    assert main(["bench", "--quick", "--device", "cpu", "--density", "1.5"]) == 2
    assert "density" in capsys.readouterr().err
    assert main(["bench", "--quick", "--device", "cpu", "--repeats", "0"]) == 2
    assert "--repeats 0" in capsys.readouterr().err
