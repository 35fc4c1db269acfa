import numpy as np

from scanner_sim.hrf import convolve_hrf, double_gamma, hrf_peak_time


def test_canonical_hrf_peaks_near_five_seconds():
    assert 4.5 <= hrf_peak_time() <= 5.5
    t = np.arange(0, 32, 0.1)
    h = double_gamma(t)
    assert abs(t[np.argmax(h)] - 5.0) < 0.5
    assert h.max() == np.float64(1.0) or np.isclose(h.max(), 1.0, atol=1e-3)
    # The undershoot: negative around 15 s, back near zero by 30 s.
    assert h[(t > 12) & (t < 18)].min() < -0.05
    assert abs(h[-1]) < 0.02


def test_delay_shifts_the_peak():
    assert hrf_peak_time(1.0) > hrf_peak_time(0.0) > hrf_peak_time(-1.0)


def test_convolution_is_causal_and_peaks_after_the_event():
    dt = 0.125
    x = np.zeros((400, 2), np.float32)
    x[80, :] = 1.0
    y = convolve_hrf(x, dt, np.array([0.0, 1.0]), np.array([0, 1]))
    assert np.abs(y[:80]).max() < 1e-6  # zero up to FFT round-off
    peaks = (np.argmax(y, axis=0) - 80) * dt
    assert 4.5 <= peaks[0] <= 5.5
    assert peaks[1] > peaks[0]
