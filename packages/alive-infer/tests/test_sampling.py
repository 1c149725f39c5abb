"""Samplers against the exact flow of a Gaussian, order of accuracy, held-clean towers, seeds."""

import math

import pytest
import torch

from alive_infer.sampling import SOLVERS, initial_noise, num_evaluations, sample
from alive_models.flow import refiner_source, sampling_schedule


class GaussianFlow:
    """Data ~ N(mu, s^2) per element: the rectified-flow ODE is known in closed form.
    x_t = (1 - t) mu + sqrt(var_t) z with var_t = (1 - t)^2 s^2 + t^2, z = x_1."""

    def __init__(self, mu: torch.Tensor, s: torch.Tensor) -> None:
        self.mu, self.s = mu.double(), s.double()

    def v(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.double().reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * self.s**2 + t**2
        dvar = -2 * (1 - t) * self.s**2 + 2 * t
        return (-self.mu + dvar / (2 * var) * (x.double() - (1 - t) * self.mu)).float()

    def solution(self, z: torch.Tensor) -> torch.Tensor:
        return self.mu + self.s * z.double()


def flows():
    g = torch.Generator().manual_seed(0)
    shape_v, shape_a = (2, 3, 2, 4, 4), (2, 5, 7)
    video = GaussianFlow(torch.randn(shape_v, generator=g), 0.3 + torch.rand(shape_v, generator=g))
    audio = GaussianFlow(torch.randn(shape_a, generator=g), 0.3 + torch.rand(shape_a, generator=g))
    zv, za = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 5, 7, generator=g)
    return video, audio, zv, za


def joint_velocity(video, audio, calls=None):
    def velocity(xv, xa, tv, ta):
        if calls is not None:
            calls.append((tv.clone(), ta.clone()))
        return (None if xv is None else video.v(xv, tv), None if xa is None else audio.v(xa, ta))

    return velocity


def error(solver, steps, shift=1.0):
    video, audio, zv, za = flows()
    out_v, out_a = sample(joint_velocity(video, audio), zv, za, steps=steps, solver=solver, shift=shift)
    return max(
        (out_v.double() - video.solution(zv)).abs().max().item(),
        (out_a.double() - audio.solution(za)).abs().max().item(),
    )


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2)])
def test_order_of_accuracy_on_the_exact_gaussian_flow(solver, order):
    e = [error(solver, n) for n in (8, 16, 32)]
    ratios = [e[0] / e[1], e[1] / e[2]]
    expected = 2.0**order
    assert all(0.8 * expected < r < 1.25 * expected for r in ratios), (e, ratios)


@pytest.mark.parametrize("shift", [1.0, 7.0])
def test_dpmpp_2m_converges_and_beats_euler_at_equal_evaluations(shift):
    # On a grid uniform in t its end steps are O(1) in log-SNR, so its order there sits between 1
    # and 2 (measured 2.4-4.7x per doubling); its gain is at practical step counts.
    e = [error("dpmpp_2m", n, shift) for n in (8, 16, 32, 64)]
    assert e[0] > e[1] > e[2] > e[3]
    for n in (16, 32, 64):
        assert error("dpmpp_2m", n, shift) < error("euler", n, shift) / 1.5


@pytest.mark.parametrize("solver", SOLVERS)
def test_shifted_schedule_converges(solver):
    assert error(solver, 64, shift=7.0) < error(solver, 16, shift=7.0) < error(solver, 4, shift=7.0)


def test_heun_beats_euler_at_equal_evaluations():
    assert error("heun", 16) < error("euler", 31) / 4


def test_euler_evaluates_at_the_schedule_times():
    video, audio, zv, za = flows()
    calls = []
    sample(joint_velocity(video, audio, calls), zv, za, steps=5, solver="euler")
    expected = sampling_schedule(5)[:-1]
    got = torch.stack([tv[0] for tv, _ in calls])
    assert torch.allclose(got, expected) and all(torch.equal(tv, ta) for tv, ta in calls)
    assert len(calls) == num_evaluations("euler", 5)


def test_heun_evaluation_count():
    video, audio, zv, za = flows()
    calls = []
    sample(joint_velocity(video, audio, calls), zv, za, steps=5, solver="heun")
    assert len(calls) == num_evaluations("heun", 5) == 9


def test_one_step_of_every_solver_is_euler():
    video, audio, zv, za = flows()
    outs = [sample(joint_velocity(video, audio), zv, za, steps=1, solver=s) for s in SOLVERS]
    for out in outs[1:]:
        assert torch.allclose(out[0], outs[0][0]) and torch.allclose(out[1], outs[0][1])


@pytest.mark.parametrize("solver", SOLVERS)
def test_audio_held_clean_is_untouched_and_seen_at_t0(solver):
    video, audio, zv, _ = flows()
    clean = torch.randn(2, 5, 7)
    calls = []
    out_v, out_a = sample(
        joint_velocity(video, audio, calls), zv, clean, steps=4, solver=solver, clean_audio=True
    )
    assert out_a is clean
    assert all(torch.all(ta == 0) and torch.all(tv > 0) for tv, ta in calls)
    ref_v, _ = sample(joint_velocity(video, audio), zv, None, steps=4, solver=solver)
    assert torch.equal(out_v, ref_v)  # the towers here are independent: the video path is unchanged


def test_single_tower_runs():
    video, audio, _, za = flows()
    out_v, out_a = sample(joint_velocity(video, audio), None, za, steps=32, solver="heun", shift=1.0)
    assert out_v is None and (out_a.double() - audio.solution(za)).abs().max() < 1e-2


def test_refiner_start_reaches_the_clean_latent():
    """From y = refiner_source(z_up, eps, t0) the refiner's exact velocity (y - z)/t0 is constant:
    every solver started at t0 must land on z."""
    g = torch.Generator().manual_seed(3)
    z, z_up, eps = (torch.randn(1, 4, 2, 3, 3, generator=g) for _ in range(3))
    t0 = 0.4
    y = refiner_source(z_up, eps, t0)
    seen = []

    def velocity(xv, xa, tv, ta):
        seen.append(tv.max().item())
        return (y - z) / t0, None

    for solver in SOLVERS:
        seen.clear()
        out, _ = sample(velocity, y, None, steps=6, solver=solver, t_start=t0)
        assert torch.allclose(out, z, atol=1e-5)
        assert math.isclose(max(seen), t0, rel_tol=1e-6)


def test_same_seed_same_bits_other_seed_differs():
    video, audio, _, _ = flows()

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        zv, za = initial_noise((2, 3, 2, 4, 4), g), initial_noise((2, 5, 7), g)
        return sample(joint_velocity(video, audio), zv, za, steps=6, solver="dpmpp_2m")

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "ddim"}, "unknown solver"),
        ({"steps": 0}, "steps must be"),
        ({"clean_video": True, "clean_audio": True}, "nothing to integrate"),
        ({"t_start": 1.5}, "start time"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    video, audio, zv, za = flows()
    args = {"steps": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample(joint_velocity(video, audio), zv, za, **args)
