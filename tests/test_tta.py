"""Flip averaging (sigma.runtime.tta, `options.tta=flip`): the averaged network is mirror-equivariant (the
mirrored pair gets the mirrored map, region boxes included), it is exactly the mean of the two passes, and
the annotator option puts it in front of whichever runtime runs the network, and says so."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sigma.models import build_model
from sigma.runtime import RuntimeOptions, build_runner
from sigma.runtime.tta import FlipAveraged, mirror_regions
from sigma.types import Pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGIONS = [[{"box": [0.1, 0.2, 0.45, 0.7], "score": 0.9, "image": "original"}],
           [{"box": [0.6, 0.05, 0.95, 0.5], "score": 0.7, "image": "edited"}]]


@pytest.fixture(scope="module")
def runner():
    torch.manual_seed(7)
    model = build_model("tiny-lite").eval()
    return model, build_runner(model, RuntimeOptions("torch", channels_last=False), device=torch.device("cpu"),
                               use_bf16=False, trained=True, label="tiny-lite")


def _inputs(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g),
            torch.rand(b, 1, h, w, generator=g), torch.randint(0, 7, (b,), generator=g))


def test_mirror_regions_mirrors_x_only_and_is_its_own_inverse():
    got = mirror_regions(REGIONS)
    assert got[0][0]["box"] == pytest.approx([0.55, 0.2, 0.9, 0.7])
    assert got[1][0] == {**REGIONS[1][0], "box": pytest.approx([0.05, 0.05, 0.4, 0.5])}
    assert mirror_regions(got) == [[{**r, "box": pytest.approx(r["box"])} for r in p] for p in REGIONS]
    assert mirror_regions(None) is None


@pytest.mark.parametrize("grounded", [False, True])
def test_flip_average_is_the_mean_of_two_passes_and_mirror_equivariant(runner, grounded):
    _, plain = runner
    averaged = FlipAveraged(plain)
    o, e, p, t = _inputs(2, 64, 96, seed=3)
    regions = REGIONS if grounded else None
    got = averaged(o, e, p, t, regions)
    straight = plain(o, e, p, t, regions)
    mirrored = plain(o.flip(-1), e.flip(-1), p.flip(-1), t, mirror_regions(regions)).flip(-1)
    torch.testing.assert_close(got, (straight + mirrored) / 2)
    assert (got - straight).abs().max() > 1e-4, "a random net is not mirror-symmetric: the average must differ"
    again = averaged(o.flip(-1), e.flip(-1), p.flip(-1), t, mirror_regions(regions))
    torch.testing.assert_close(again.flip(-1), got, atol=1e-5, rtol=0)     # the mirrored pair, the mirrored map
    assert averaged.describe()["tta"] == "flip" and averaged.describe()["runtime"] == "torch"


def test_the_annotator_option_wraps_the_runner_and_mirrors_the_mask():
    from sigma.registry import create_annotator

    rng = np.random.default_rng(0)
    original = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    edited = original.copy()
    edited[20:50, 10:60] = 255 - edited[20:50, 10:60]
    pair = Pair(original, edited, "", pair_id="p")
    mirror = Pair(original[:, ::-1].copy(), edited[:, ::-1].copy(), "", pair_id="m")
    opts = {"random_init": True, "runtime": "torch", "model": "tiny-lite"}
    plain = create_annotator("sigma-lite", **opts)
    flip = create_annotator("sigma-lite", tta="flip", **opts)
    assert "tta" not in plain.describe()["runtime"] and flip.describe()["runtime"]["tta"] == "flip"
    a, b = flip.predict([pair, mirror])
    np.testing.assert_allclose(a.prob, b.prob[:, ::-1], atol=1e-5)
    assert np.abs(a.prob - plain.predict([pair])[0].prob).max() > 1e-4
