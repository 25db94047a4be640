"""Diffusion math against closed forms. For Gaussian data x0 ~ N(mu, sigma^2) the optimal
denoiser is analytic: E[eps | x_t] = s (x_t - a mu) / (a^2 sigma^2 + s^2). With it, a correct
sampler must reproduce the data's mean and variance."""

import math

import numpy as np
import pytest
import torch

from fusion_core.diffusion import (
    DDIMSampler, DDPMSampler, DPMSolverSampler, GaussianDiffusion, Guidance, batched_pair,
    classifier_free_guidance, make_sampler, make_schedule, respace,
)

MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
SIGMA = torch.tensor([0.3, 1.0, 0.1, 2.0], dtype=torch.float64)


def optimal_denoiser(diff: GaussianDiffusion):
    def denoise(x_t, t):
        a, s = diff.alpha_sigma(t, x_t)
        eps = s * (x_t - a * MU) / (a**2 * SIGMA**2 + s**2)
        return diff.convert(x_t, t, eps, to=diff.prediction, prediction="eps")

    return denoise


def check_moments(x, rtol_std):
    assert torch.allclose(x.mean(0), MU, atol=0.04 * SIGMA.max().item() / 2 + 0.01), (x.mean(0), MU)
    torch.testing.assert_close(x.std(0), SIGMA, rtol=rtol_std, atol=0.0)


# -- schedules ----------------------------------------------------------------------------------

def test_cosine_schedule_matches_published_formula():
    T, s = 1000, 0.008
    ac = make_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f(t + 1) / f(0) for t in range(T)])
    # identical until beta clipping at 0.999 bites (only the very last steps)
    np.testing.assert_allclose(ac[:-2], expected[:-2], rtol=1e-10)
    assert np.all(np.diff(ac) < 0) and 0 < ac[-1] < 1e-4


def test_linear_schedule_matches_ddpm():
    ac = make_schedule("linear", 1000)
    np.testing.assert_allclose(ac, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12)
    ac50 = make_schedule("linear", 50)  # rescaled betas keep the same end point
    assert 0.5 * ac[-1] < ac50[-1] < 2 * ac[-1] or ac50[-1] < 1e-3


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear", "sigmoid"])
def test_every_schedule_is_a_valid_table(name):
    ac = make_schedule(name, 200)
    assert ac.shape == (200,) and np.all(np.diff(ac) < 0) and np.all((ac > 0) & (ac < 1))


def test_schedules_match_diffusers_when_installed():
    diffusers = pytest.importorskip("diffusers")
    for ours, theirs in [("linear", "linear"), ("cosine", "squaredcos_cap_v2"),
                         ("scaled_linear", "scaled_linear")]:
        kw = {"beta_start": 0.00085, "beta_end": 0.012} if ours == "scaled_linear" else {}
        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, **kw)
        np.testing.assert_allclose(make_schedule(ours, 1000), sched.alphas_cumprod.double().numpy(),
                                   rtol=1e-5, atol=1e-8)  # diffusers computes in float32


def test_unknown_schedule_and_prediction_rejected():
    with pytest.raises(ValueError, match="known: "):
        make_schedule("cosin")
    with pytest.raises(ValueError, match="prediction must be one of"):
        GaussianDiffusion(prediction="score")


# -- forward process and parameterizations -------------------------------------------------------

def test_q_sample_has_closed_form_moments():
    diff = GaussianDiffusion("cosine", 1000)
    t = torch.full((200_000,), 300)
    x0 = torch.full((200_000, 1), 2.0, dtype=torch.float64)
    x_t = diff.q_sample(x0, t, torch.randn_like(x0))
    ab = diff.alphas_cumprod[300].item()
    assert abs(x_t.mean().item() - 2 * ab**0.5) < 0.01
    assert abs(x_t.var().item() - (1 - ab)) < 0.01


@pytest.mark.parametrize("source", ["eps", "x0", "v"])
def test_parameterizations_round_trip(source):
    diff = GaussianDiffusion("cosine", 1000, prediction=source)
    x0, eps = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    x_t = diff.q_sample(x0, t, eps)
    pred = diff.target(x0, eps, t)  # the perfect prediction in `source` space
    got_x0, got_eps = diff.to_x0_eps(x_t, t, pred)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)
    for to in ("eps", "x0", "v"):
        there = diff.convert(x_t, t, pred, to)
        back = diff.convert(x_t, t, there, source, prediction=to)
        torch.testing.assert_close(back, pred)
    a, s = diff.alpha_sigma(t, x0)
    torch.testing.assert_close(diff.convert(x_t, t, pred, "v"), a * eps - s * x0)


def test_timestep_sampling_respects_per_sample_upper_bound():
    diff = GaussianDiffusion("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    max_t = torch.tensor([500, 999] * 20_000)
    t = diff.sample_timesteps(len(max_t), max_t=max_t, generator=g)
    assert t[::2].max() <= 500 and t[1::2].max() == 999 and t.min() == 0
    assert abs(t[::2].double().mean().item() - 250) < 5  # uniform on [0, 500]
    assert abs(t[1::2].double().mean().item() - 499.5) < 8


def test_uniform_timesteps_are_the_unchanged_draw():
    """The default law reproduces the old draw bit for bit: runs trained before ``t_sampling``
    existed resume and repeat exactly."""
    diff = GaussianDiffusion("cosine", 1000)
    t = diff.sample_timesteps(1000, generator=torch.Generator().manual_seed(3))
    u = torch.rand(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(t, (u * 1000).floor().long())


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.5, 0.7)])
def test_logit_normal_timesteps_follow_their_closed_form_cdf(mean, std):
    """P(t <= k) = P(u < (k + 1) / (max_t + 1)) = Phi((logit((k + 1) / (max_t + 1)) - mean) / std),
    against the empirical CDF of 200,000 draws (Kolmogorov bound: 0.004 at p = 0.001)."""
    diff = GaussianDiffusion("cosine", 1000, t_sampling="logit_normal", logit_mean=mean, logit_std=std)
    for max_t in (None, 500):
        n = 200_000
        t = diff.sample_timesteps(n, max_t=max_t, generator=torch.Generator().manual_seed(0)).numpy()
        hi = 999 if max_t is None else max_t
        assert t.min() >= 0 and t.max() <= hi
        k = np.arange(hi)  # P(t <= hi) = 1 trivially
        q = (k + 1) / (hi + 1)
        cdf = 0.5 * (1 + np.vectorize(math.erf)((np.log(q / (1 - q)) - mean) / (std * math.sqrt(2))))
        emp = np.searchsorted(np.sort(t), k, side="right") / n
        assert np.abs(emp - cdf).max() < 0.005
    # mid-process heavy: the middle fifth gets more draws than uniform's 20%, each end less
    t = GaussianDiffusion(t_sampling="logit_normal").sample_timesteps(100_000, generator=torch.Generator().manual_seed(1))
    assert ((t >= 400) & (t < 600)).float().mean() > 0.28 and (t < 100).float().mean() < 0.05


def test_uniform_mix_timesteps_follow_the_mixture_cdf_and_leave_the_plain_law_alone():
    """``t_uniform_mix = w``: P(t <= k) = w q + (1 - w) Phi((logit(q) - mean) / std) with
    q = (k + 1) / (max_t + 1), against 200,000 draws, the low end (t <= 10) to 3.5 standard errors;
    and w = 0 draws exactly the plain law's steps (the same random stream)."""
    mean, std, w = -1.0, 1.0, 0.1
    diff = GaussianDiffusion("cosine", 1000, t_sampling="logit_normal", logit_mean=mean, logit_std=std,
                             t_uniform_mix=w)
    for max_t in (None, 50):
        n = 200_000
        t = diff.sample_timesteps(n, max_t=max_t, generator=torch.Generator().manual_seed(0)).numpy()
        hi = 999 if max_t is None else max_t
        assert t.min() >= 0 and t.max() <= hi
        k = np.arange(hi)
        q = (k + 1) / (hi + 1)
        ln = 0.5 * (1 + np.vectorize(math.erf)((np.log(q / (1 - q)) - mean) / (std * math.sqrt(2))))
        emp = np.searchsorted(np.sort(t), k, side="right") / n
        assert np.abs(emp - (w * q + (1 - w) * ln)).max() < 0.005
    low = (diff.sample_timesteps(200_000, generator=torch.Generator().manual_seed(1)) <= 10).double().mean().item()
    p_low = w * 11 / 1000 + (1 - w) * 0.5 * (1 + math.erf((math.log(11 / 989) - mean) / (std * math.sqrt(2))))
    assert abs(low - p_low) < 3.5 * math.sqrt(p_low / 200_000)  # 0.14% (the law alone: 0.03%)
    plain = GaussianDiffusion(t_sampling="logit_normal", logit_mean=mean)
    zero = GaussianDiffusion(t_sampling="logit_normal", logit_mean=mean, t_uniform_mix=0.0)
    assert torch.equal(plain.sample_timesteps(500, generator=torch.Generator().manual_seed(2)),
                       zero.sample_timesteps(500, generator=torch.Generator().manual_seed(2)))
    # all uniform is the uniform law, whatever the logit parameters
    assert GaussianDiffusion(t_sampling="logit_normal", logit_mean=-3.0, t_uniform_mix=1.0) == GaussianDiffusion()
    assert diff != plain and GaussianDiffusion.from_config(diff.config()) == diff
    for bad in (-0.1, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="t_uniform_mix must be a share in"):
            GaussianDiffusion(t_sampling="logit_normal", t_uniform_mix=bad)


def test_t_sampling_config_round_trip_and_rejection():
    diff = GaussianDiffusion("cosine", 1000, "v", t_sampling="logit_normal", logit_mean=0.3, logit_std=0.8)
    back = GaussianDiffusion.from_config(diff.config())
    assert back == diff and back.t_sampling == "logit_normal" and back.logit_std == 0.8
    assert back != GaussianDiffusion("cosine", 1000, "v")
    # parameters of a law not in use do not make two processes differ
    assert GaussianDiffusion(logit_std=2.0) == GaussianDiffusion()
    # a config saved before t_sampling existed loads with the uniform law
    old = {k: v for k, v in GaussianDiffusion().config().items() if k not in ("t_sampling", "logit_mean", "logit_std",
                                                                          "t_uniform_mix")}
    assert GaussianDiffusion.from_config(old).t_sampling == "uniform"
    for bad, match in [({"t_sampling": "lognormal"}, "t_sampling must be one of"),
                       ({"logit_std": 0.0}, "logit_std must be a finite number > 0"),
                       ({"logit_mean": float("nan")}, "logit_mean must be a finite number")]:
        with pytest.raises(ValueError, match=match):
            GaussianDiffusion(**bad)


def test_min_snr_weights():
    for pred, expect in [("eps", lambda snr: min(snr, 5) / snr), ("x0", lambda snr: min(snr, 5)),
                         ("v", lambda snr: min(snr, 5) / (snr + 1))]:
        diff = GaussianDiffusion("cosine", 1000, prediction=pred)
        t = torch.tensor([10, 500, 990])
        w = diff.loss_weight(t, "min_snr", gamma=5.0)
        ref = [expect(diff.snr(t[i : i + 1]).item()) for i in range(3)]
        torch.testing.assert_close(w.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-6, atol=0)
    assert GaussianDiffusion().loss_weight(torch.tensor([3]), "uniform").item() == 1.0


def test_training_loss_is_per_sample_mse_of_target():
    diff = GaussianDiffusion("cosine", 1000, prediction="v")
    x0, eps, t = torch.randn(4, 2, 3), torch.randn(4, 2, 3), torch.tensor([1, 10, 100, 999])
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    loss = diff.training_loss(zero, x0, t=t, noise=eps)
    torch.testing.assert_close(loss, diff.target(x0, eps, t).pow(2).mean((1, 2)))
    oracle = lambda x, tt: diff.target(x0, eps, tt)  # noqa: E731
    assert diff.training_loss(oracle, x0, t=t, noise=eps).abs().max() < 1e-12


# -- samplers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_1000_steps_reproduces_gaussian_data(prediction):
    diff = GaussianDiffusion("cosine", 1000, prediction=prediction)
    g = torch.Generator().manual_seed(1)
    x = DDPMSampler(diff).sample(optimal_denoiser(diff), (20_000, 4), generator=g, dtype=torch.float64)
    check_moments(x, rtol_std=0.03)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpm_solver_20_steps_reproduces_gaussian_data(prediction):
    diff = GaussianDiffusion("cosine", 1000, prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x = DPMSolverSampler(diff, steps=20).sample(optimal_denoiser(diff), (20_000, 4), generator=g,
                                                dtype=torch.float64)
    check_moments(x, rtol_std=0.03)


def test_ddim_reproduces_gaussian_data_for_eta_0_and_1():
    diff = GaussianDiffusion("cosine", 1000)
    for eta in (0.0, 1.0):
        g = torch.Generator().manual_seed(3)
        x = DDIMSampler(diff, steps=None, eta=eta).sample(optimal_denoiser(diff), (20_000, 4),
                                                          generator=g, dtype=torch.float64)
        check_moments(x, rtol_std=0.04)


def test_ddim_eta0_is_deterministic_and_inverts():
    diff = GaussianDiffusion("cosine", 1000)
    den = optimal_denoiser(diff)
    # DDIM is first order: the round-trip error falls like 1/steps (0.24 at 200 steps, 0.04 at
    # 1000 on the sigma = 0.1 coordinate, whose inverse map stretches errors 10x)
    sampler = DDIMSampler(diff, steps=None, eta=0.0)
    x_T = torch.randn(512, 4, dtype=torch.float64)
    a = sampler.sample(den, x_T=x_T, generator=torch.Generator().manual_seed(0))
    b = sampler.sample(den, x_T=x_T, generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    back = sampler.invert(den, a)
    err = (back - x_T).abs().max().item()
    assert err < 0.05, err
    again = sampler.sample(den, x_T=back)
    assert ((again - a).abs().max(0).values / SIGMA).max().item() < 0.05


def test_clip_x0_bounds_predictions():
    diff = GaussianDiffusion("cosine", 1000, prediction="x0")
    wild = lambda x, t: torch.full_like(x, 5.0)  # noqa: E731
    out = DDPMSampler(diff, steps=10, clip_x0=1.0).sample(wild, (8, 3))
    assert out.abs().max() <= 1.0 + 1e-6


def test_respacing_rules():
    ts = respace(1000, 50, "trailing")
    assert ts[0] == 999 and len(set(ts.tolist())) == 50 and np.all(np.diff(ts) < 0)
    assert respace(1000, None).tolist() == list(range(999, -1, -1))
    assert respace(1000, 10, "linspace")[[0, -1]].tolist() == [999, 0]
    ac = make_schedule("cosine", 1000)
    ls = respace(1000, 20, "logsnr", ac)
    assert ls[0] == 999 and ls[-1] == 0 and np.all(np.diff(ls) < 0)
    lam = 0.5 * np.log(ac[ls[1:]] / (1 - ac[ls[1:]]))
    assert np.ptp(np.diff(lam)) < 0.3 * np.diff(lam).mean()  # evenly spaced in log-SNR
    with pytest.raises(ValueError, match="needs alphas_cumprod"):
        respace(1000, 10, "logsnr")
    with pytest.raises(ValueError, match=r"steps must be in \[1, T=1000\]"):
        respace(1000, 0)


def test_make_sampler_by_name():
    diff = GaussianDiffusion()
    assert isinstance(make_sampler("dpm_solver", diff, 20), DPMSolverSampler)
    with pytest.raises(ValueError, match="known: "):
        make_sampler("euler", diff)


def test_classifier_free_guidance_is_linear_extrapolation():
    cond = lambda x, t: x + 1  # noqa: E731
    uncond = lambda x, t: x * 0  # noqa: E731
    x, t = torch.randn(3, 2), torch.zeros(3, dtype=torch.long)
    pair = lambda x, t: (cond(x, t), uncond(x, t))  # noqa: E731
    torch.testing.assert_close(classifier_free_guidance(pair, 1.0)(x, t), cond(x, t))
    torch.testing.assert_close(classifier_free_guidance(pair, 0.0)(x, t), uncond(x, t))
    torch.testing.assert_close(classifier_free_guidance(pair, 3.0)(x, t), 3 * (x + 1))
    calls = []

    def both(xx, tt):  # one batched pass: first half conditional
        calls.append(xx.shape[0])
        return torch.cat([cond(xx[:3], tt[:3]), uncond(xx[3:], tt[3:])])

    torch.testing.assert_close(classifier_free_guidance(batched_pair(both), 3.0)(x, t), 3 * (x + 1))
    assert calls == [6]


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_guidance_interval_guides_inside_and_uses_the_conditional_outside(prediction):
    diff = GaussianDiffusion(T=100, prediction=prediction)
    cond = lambda x, t: x + 1  # noqa: E731
    uncond = lambda x, t: x * 0  # noqa: E731
    pair = lambda x, t: (cond(x, t), uncond(x, t))  # noqa: E731
    x = torch.randn(4, 3)
    t = torch.tensor([0, 20, 50, 99])  # t / T = 0, 0.2, 0.5, 0.99
    out = classifier_free_guidance(pair, Guidance(3.0, interval=(0.2, 0.5)), diff)(x, t)
    torch.testing.assert_close(out[1:3], 3 * (x[1:3] + 1))  # inside: guided
    torch.testing.assert_close(out[[0, 3]], x[[0, 3]] + 1)  # outside: the conditional prediction
    # the default interval is every step: the plain scale, bit for bit
    assert torch.equal(classifier_free_guidance(pair, Guidance(3.0), diff)(x, t),
                       classifier_free_guidance(pair, 3.0)(x, t))


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_guidance_rescale_matches_the_conditional_spread_in_x0(prediction):
    """rescale=1: the guided x0 prediction has, per row, the conditional x0's standard deviation
    and the plain guided x0's direction (Lin et al. 2024, eq. 15-16); rescale=0 is plain CFG."""
    diff = GaussianDiffusion(T=100, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=g, dtype=torch.float64)
    t = torch.full((5,), 40)
    c_pred, u_pred = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(5, 16, generator=g,
                                                                                     dtype=torch.float64)
    pair = lambda x, t: (c_pred, u_pred)  # noqa: E731
    x0 = lambda p: diff.to_x0_eps(x, t, p)[0]  # noqa: E731
    plain = classifier_free_guidance(pair, 4.0)(x, t)
    full = classifier_free_guidance(pair, Guidance(4.0, rescale=1.0), diff)(x, t)
    torch.testing.assert_close(x0(full).std(1), x0(c_pred).std(1))
    ref = x0(plain) * x0(c_pred).std(1, keepdim=True) / x0(plain).std(1, keepdim=True)  # closed form
    torch.testing.assert_close(x0(full), ref)
    half = classifier_free_guidance(pair, Guidance(4.0, rescale=0.5), diff)(x, t)
    torch.testing.assert_close(x0(half), 0.5 * ref + 0.5 * x0(plain))
    torch.testing.assert_close(classifier_free_guidance(pair, Guidance(4.0, rescale=0.0), diff)(x, t), plain)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=-1), "guidance scale must be a finite number >= 0"),
    (dict(scale=2, interval=(0.5, 0.2)), "0 <= lo <= hi <= 1"),
    (dict(scale=2, interval=(0.0, 1.5)), "0 <= lo <= hi <= 1"),
    (dict(scale=2, interval=0.5), "two numbers"),
    (dict(scale=2, rescale=1.5), "guidance rescale must be a finite number >= 0 and <= 1"),
])
def test_guidance_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Guidance(**kwargs)


def test_guidance_interval_or_rescale_needs_the_process():
    with pytest.raises(ValueError, match="needs the diffusion process"):
        classifier_free_guidance(lambda x, t: (x, x), Guidance(2.0, rescale=0.5))
    with pytest.raises(TypeError, match="guidance must be a number"):
        Guidance.of("3")
