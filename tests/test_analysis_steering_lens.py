"""analysis.steering (prediction from weights vs the MLP) and analysis.logit_lens on small random GPTs."""

import torch
from toy_models import random_gpt

from analysis.faithfulness import layer_cp
from analysis.logit_lens import lens_logits, lens_points, logit_lens
from analysis.steering import steering_prediction, steering_sweep
from analysis.valdata import ValTokens


def test_steering_prediction_equals_the_mlp_change_without_a_norm():
    model = random_gpt(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    s = torch.randn(16, generator=g, dtype=torch.float64)
    for layer in (0, 1):
        mlp, cp = model.blocks[layer].mlp, layer_cp(model, layer)
        for alpha in (1e-3, 0.3, -1.7, 25.0):
            with torch.no_grad():
                measured = mlp(x + alpha * s) - mlp(x)
            predicted = steering_prediction(cp, x, s, alpha)
            scale = measured.abs().max()
            assert (measured - predicted).abs().max() <= 1e-10 * max(1.0, float(scale))
    # the quadratic term alone: B(αs) = α² B(s)
    torch.testing.assert_close(
        steering_prediction(cp, torch.zeros_like(x), s, 3.0), 9.0 * mlp(s).expand_as(x)
    )


def test_steering_through_the_norm_saturates_and_loses_the_sign():
    model = random_gpt()
    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    s = torch.randn(16, generator=torch.Generator().manual_seed(1))
    alphas = torch.tensor([1e-3, 1e-2, 1e3, 1e4])
    curve = steering_sweep(model, tokens, 1, s, alphas)
    # small α: the frozen-norm prediction is close; large α: the measured change tends to its limit
    assert curve.prediction_error[0] < 0.5
    torch.testing.assert_close(
        curve.measured_pos[-1], torch.tensor(curve.saturation, dtype=torch.float64), rtol=1e-3, atol=0
    )
    torch.testing.assert_close(
        curve.measured_neg[-1], torch.tensor(curve.saturation, dtype=torch.float64), rtol=1e-3, atol=0
    )
    assert curve.odd_measured[-1] < 1e-2 * curve.even_measured[-1]  # the sign of α no longer matters
    assert curve.predicted_pos[-1] > 100 * curve.measured_pos[-1]  # while the no-norm prediction grows as α²


def test_logit_lens_last_point_is_the_model_output():
    model = random_gpt(logit_softcap=30.0)
    tokens = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(2))
    names = [name for _, name in lens_points(model)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    lens = lens_logits(model, cache)
    assert len(lens) == 2 * model.config.n_layer + 1
    torch.testing.assert_close(lens[-1], logits, rtol=0, atol=0)
    val = ValTokens(tokens[:, :-1], tokens[:, 1:])
    result = logit_lens(model, val, batch_size=2)
    with torch.no_grad():
        loss = model(val.x, val.y)
    torch.testing.assert_close(result.loss[-1].float(), loss, rtol=1e-5, atol=1e-5)
    assert abs(float(result.kl_to_final[-1])) < 1e-6
    assert result.top1.shape == (len(lens), val.x.shape[1])
