"""Structure descriptors and FFT matching for SAR-to-optical registration (pure numpy/scipy).

SAR and optical intensities are physically unrelated (a roof is bright in one, dark in the
other; speckle is multiplicative), so we never correlate intensities. We correlate *structure*:
dense CFOG-like descriptors (channels of oriented gradient magnitude, smoothed across space
and orientation, normalised per pixel), with a speckle-robust SAR gradient (log-ratio of local
means, ROEWA-like), matched by a masked normalised cross-correlation computed with FFTs.

Everything here works on in-memory arrays; reading, tiling and georeferencing live in
``pipeline.coregister``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

EPS = 1e-6


def _masked_mean_filter(img: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Box mean of ``img`` over valid pixels only, and the valid fraction in each box."""
    v = valid.astype(np.float64)
    num = ndimage.uniform_filter(np.where(valid, img, 0.0).astype(np.float64), size=size, mode="constant")
    den = ndimage.uniform_filter(v, size=size, mode="constant")
    return num / np.maximum(den, EPS), den


def sar_gradients(sar_db: np.ndarray, valid: np.ndarray, half: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Speckle-robust SAR gradient (gx, gy): log-ratio of the mean intensity on either side.

    Ratio-of-means edge detectors have a constant false-alarm rate under multiplicative
    speckle, unlike differences (which scale with brightness). ``half`` is the width of each
    half window in pixels; the windows are ``2*half+1`` long along the edge.
    """
    inten = np.power(10.0, np.clip(np.nan_to_num(sar_db, nan=-99.0), -99, 99) / 10.0)
    valid = valid & np.isfinite(sar_db)
    w = max(1, int(half))
    sh = w // 2 + 1  # offset from the pixel to the centre of a half window of width w
    # horizontal gradient: windows of w columns right/left, 2w+1 rows tall
    mh, fh = _masked_mean_filter(inten, valid, (2 * w + 1, w))
    mv, fv = _masked_mean_filter(inten, valid, (w, 2 * w + 1))
    gx = np.zeros_like(mh)
    gy = np.zeros_like(mv)
    gx[:, sh:-sh] = np.log(np.maximum(mh[:, 2 * sh :], EPS)) - np.log(np.maximum(mh[:, : -2 * sh], EPS))
    gy[sh:-sh, :] = np.log(np.maximum(mv[2 * sh :, :], EPS)) - np.log(np.maximum(mv[: -2 * sh, :], EPS))
    ok_h = np.zeros_like(valid)
    ok_v = np.zeros_like(valid)
    ok_h[:, sh:-sh] = (fh[:, 2 * sh :] > 0.5) & (fh[:, : -2 * sh] > 0.5)
    ok_v[sh:-sh, :] = (fv[2 * sh :, :] > 0.5) & (fv[: -2 * sh, :] > 0.5)
    gx[~ok_h] = 0.0
    gy[~ok_v] = 0.0
    return gx.astype(np.float32), gy.astype(np.float32)


def bright_mask(sar_db: np.ndarray, valid: np.ndarray, above_db: float, size: int = 7, grow: int = 3) -> np.ndarray:
    """SAR pixels whose local mean intensity (``size`` px box) is over ``above_db`` dB above the
    median of the window, grown by ``grow`` px: layover and double bounce. Their edges sit
    where elevated structure puts them (roofs laid over toward the sensor by h / tan(incidence),
    a bright line on the sensor-facing wall foot only), not on the ground, so they bias a
    registration whose truth is the ground. Dark pixels (radar shadow) are kept: masking them
    lost more matches than it removed bias, and water looks the same."""
    inten = np.power(10.0, np.clip(np.nan_to_num(sar_db, nan=-99.0), -99, 99) / 10.0)
    mean, frac = _masked_mean_filter(inten, valid, (size, size))
    local = 10 * np.log10(np.maximum(mean, 1e-12))
    out = valid & (frac > 0) & (local > float(np.median(local[valid])) + above_db)
    return ndimage.binary_dilation(out, iterations=grow) if grow > 0 else out


def enl_estimate(sar_db: np.ndarray, valid: np.ndarray, size: int = 5) -> float:
    """Equivalent number of looks from the speckle itself: for L-look intensity the variance
    of ln(I) is trigamma(L) whatever the brightness, so the median local variance of ln(I)
    (5x5, robust to the minority of windows on edges and texture) inverts to L. Texture left
    in the windows lowers the estimate, which only makes the detector below more cautious."""
    from scipy import special

    ln = np.where(valid, np.nan_to_num(sar_db) * (np.log(10) / 10), 0.0).astype(np.float64)
    v = valid.astype(np.float64)
    n = ndimage.uniform_filter(v, size)
    m1 = ndimage.uniform_filter(ln, size) / np.maximum(n, EPS)
    m2 = ndimage.uniform_filter(ln * ln, size) / np.maximum(n, EPS)
    full = valid & (n > 0.999)
    if full.sum() < 50:
        return 1.0
    var = float(np.median((m2 - m1**2)[full])) * size * size / (size * size - 1)
    looks = np.array([0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128])
    tri = special.polygamma(1, looks)  # decreasing in L
    return float(np.interp(-var, -tri, looks))


def bright_scatterers(sar_db: np.ndarray, valid: np.ndarray, pfa: float = 1e-3, looks: float | None = None,
                      size: int = 3, background: int = 21) -> np.ndarray:
    """CFAR detection of bright point and line scatterers: pixels whose ``size`` x ``size``
    mean intensity is above what speckle of the local ground level would give with false-alarm
    rate ``pfa``. The ground level is the local geometric mean over ``background`` px, corrected
    to a mean for L looks (E ln I = ln mu + digamma(L) - ln L); the mean of k L-look pixels is
    Gamma(kL) distributed, so the threshold follows from the looks alone (estimated from the
    data when not given), not from a brightness chosen for one scene. Elevated and wall
    scatterers (layover, double bounce) are the bright ones in urban SAR; a thin bright line
    is diluted in a 7x7 mean, not in a 3x3 one."""
    from scipy import special

    L = float(looks) if looks else enl_estimate(sar_db, valid)
    ln = np.where(valid, np.nan_to_num(sar_db) * (np.log(10) / 10), 0.0).astype(np.float64)
    v = valid.astype(np.float64)
    nb = ndimage.uniform_filter(v, background, mode="constant")
    bg = ndimage.uniform_filter(ln, background, mode="constant") / np.maximum(nb, EPS)
    mu = np.exp(bg - (special.digamma(L) - np.log(L)))
    inten = np.where(valid, np.exp(ln), 0.0)
    ns = ndimage.uniform_filter(v, size, mode="constant")
    local = ndimage.uniform_filter(inten, size, mode="constant") / np.maximum(ns, EPS)
    k = size * size * L
    ratio = float(special.gammaincinv(k, 1.0 - pfa)) / k  # Gamma(k, 1/k) quantile
    return valid & (ns > 0.5) & (nb > 0.3) & (local > ratio * mu)


def optical_gradients(gray: np.ndarray, valid: np.ndarray, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (gx, gy) of the optical image after Gaussian smoothing (masked, so edges of
    the data footprint do not produce gradients)."""
    g = np.where(valid, gray, 0.0).astype(np.float64)
    v = valid.astype(np.float64)
    sg = ndimage.gaussian_filter(g, sigma) / np.maximum(ndimage.gaussian_filter(v, sigma), EPS)
    gx = ndimage.sobel(sg, axis=1) / 8.0
    gy = ndimage.sobel(sg, axis=0) / 8.0
    inner = ndimage.binary_erosion(valid, iterations=2, border_value=0)
    gx[~inner] = 0.0
    gy[~inner] = 0.0
    return gx.astype(np.float32), gy.astype(np.float32)


def cfog(gx: np.ndarray, gy: np.ndarray, n_orient: int = 9, sigma: float = 1.5) -> np.ndarray:
    """CFOG-like descriptor (n_orient, H, W): |oriented gradient| channels over 0..180 degrees,
    Gaussian-smoothed in space, [1,2,1]-smoothed across orientation (cyclic), then L2-normalised
    per pixel. Absolute values make it invariant to contrast reversal between sensors; the
    per-pixel normalisation makes it invariant to edge strength."""
    thetas = np.arange(n_orient) * np.pi / n_orient
    cos = np.cos(thetas).astype(np.float32)[:, None, None]
    sin = np.sin(thetas).astype(np.float32)[:, None, None]
    ch = np.abs(cos * gx.astype(np.float32) + sin * gy.astype(np.float32))
    ch = ndimage.gaussian_filter(ch, sigma=(0, sigma, sigma), truncate=3.0)  # 3 sigma: 99.7 % of the kernel
    sm = 0.5 * ch  # cyclic [1, 2, 1] / 4 across orientation
    sm[1:] += 0.25 * ch[:-1]
    sm[0] += 0.25 * ch[-1]
    sm[:-1] += 0.25 * ch[1:]
    sm[-1] += 0.25 * ch[0]
    ch = sm
    norm = np.sqrt(np.einsum("kij,kij->ij", ch, ch))
    # weak-gradient areas get a floor so their (noisy) directions do not count as structure
    floor = 0.1 * float(np.median(norm[norm > 0])) if np.any(norm > 0) else 1.0
    return (ch / (norm + floor + EPS)).astype(np.float32)


def downsample(img: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Block mean over valid pixels (``factor`` x ``factor``); a block is valid if half of it is."""
    if factor <= 1:
        return img.astype(np.float64), valid.copy()
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    a = np.where(valid, img, 0.0)[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor)
    v = valid[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor)
    s, n = a.sum(axis=(1, 3)), v.sum(axis=(1, 3))
    return s / np.maximum(n, 1), n >= 0.5 * factor * factor


@dataclass(frozen=True)
class Spectra:
    """The FFTs one side of a masked NCC needs (mask, channel sum, sum of squares, each channel),
    computed once per window and reused for every correlation it takes part in: a tile's EO
    template is correlated with several SAR feature families and with their surrogate nulls."""

    mask: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    channels: np.ndarray
    n_valid: float
    size: tuple[int, int]
    shape: tuple[int, int]


def fft_shape(template_size: tuple[int, int], radius: int) -> tuple[int, int]:
    """FFT size for a template of ``template_size`` searched within +-``radius``: no wrap-around
    for the correlation (lags 0..2r) nor for the flipped null (see ncc_from_spectra)."""
    h, w = template_size
    return sfft.next_fast_len(h + 2 * radius, real=True), sfft.next_fast_len(w + 2 * radius, real=True)


def spectra(img: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> Spectra:
    """Spectra of a (C, h, w) descriptor window over ``mask``, zero-padded to ``shape`` (one
    batched real FFT of C + 3 planes)."""
    c = img.shape[0]
    planes = np.empty((c + 3,) + mask.shape, np.float32)  # single precision: see ncc_from_spectra
    planes[0] = mask
    # minus the mean over all channels and valid pixels: the NCC (one long vector) does not
    # change, and the variances are no longer small differences of large sums
    n = max(float(mask.sum()) * c, 1.0)
    mean = float(np.einsum("kij,ij->", img, mask, dtype=np.float64)) / n
    np.multiply(img - np.float32(mean), mask, out=planes[3:])
    planes[1] = planes[3:].sum(axis=0)
    planes[2] = np.einsum("kij,kij->ij", planes[3:], planes[3:])
    f = sfft.rfft2(planes, s=shape, axes=(-2, -1), workers=1)
    return Spectra(f[0], f[1], f[2], f[3:], float(mask.sum()), (int(mask.shape[0]), int(mask.shape[1])), shape)


def ncc_from_spectra(t: Spectra, s: Spectra, radius: int, min_overlap: float, flipped: bool = False) -> np.ndarray:
    """Masked NCC surface (see masked_ncc) from precomputed spectra; ``flipped``: against the search
    window turned 180 degrees (the surrogate null of null_ncc) without another FFT of it.

    Correlating with a flipped window is convolving with the window: entry k of the correlation
    with s(H-1-y) is the convolution at H-1-k, and for k in 0..2r that index lies in [h-1, H-1],
    where a circular convolution of size >= H does not wrap. So the null costs six inverse FFTs,
    none forward."""
    h, w = t.size
    H, W = s.size
    if H != h + 2 * radius or W != w + 2 * radius:
        raise ValueError(f"search window {H}x{W} must be template {h}x{w} plus 2*radius={2 * radius}")
    if t.shape != s.shape:
        raise ValueError(f"spectra of different FFT sizes {t.shape} and {s.shape}")
    c = t.channels.shape[0]

    def pair(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b if flipped else np.conj(a) * b

    prods = np.stack([
        pair(t.mask, s.mask), pair(t.total, s.mask), pair(t.squares, s.mask), pair(t.mask, s.total),
        pair(t.mask, s.squares), pair(t.channels, s.channels).sum(axis=0),
    ])
    # single-precision transforms (half the cost) of mean-free inputs: their relative error,
    # ~1e-6 of the largest sum, moves the NCC by ~1e-5 at most, far below the 1e-2 steps the
    # sub-pixel fit works on; the moments are then combined in double precision
    planes = sfft.irfft2(prods, s=t.shape, axes=(-2, -1), workers=1).astype(np.float64)
    n = 2 * radius + 1
    planes = planes[:, h - 1 : H, w - 1 : W][:, ::-1, ::-1] if flipped else planes[:, :n, :n]
    count, sum_t, sum_t2, sum_s, sum_s2, sum_ts = planes
    count = count * c
    cnt = np.maximum(count, 1.0)
    num = sum_ts - sum_t * sum_s / cnt
    var_t = np.maximum(sum_t2 - sum_t**2 / cnt, 0.0)
    var_s = np.maximum(sum_s2 - sum_s**2 / cnt, 0.0)
    ncc = num / np.sqrt(np.maximum(var_t * var_s, EPS))
    need = min_overlap * t.n_valid * c
    ncc[(count < need) | (var_t <= EPS) | (var_s <= EPS)] = -np.inf
    return ncc


def null_ncc(template: np.ndarray, tmask: np.ndarray, search: np.ndarray, smask: np.ndarray, radius: int,
             min_overlap: float) -> np.ndarray:
    """Surrogate null surface: the template against the search window turned 180 degrees. The
    orientation channels (0-180 deg, axial) are unchanged by that turn, so the statistics match
    those of the real surface while no true match exists."""
    shape = fft_shape(tmask.shape, radius)
    return ncc_from_spectra(spectra(template, tmask, shape), spectra(search, smask, shape), radius, min_overlap,
                            flipped=True)


def masked_ncc(
    template: np.ndarray, tmask: np.ndarray, search: np.ndarray, smask: np.ndarray, radius: int, min_overlap: float
) -> np.ndarray:
    """Masked NCC (Padfield 2012) of a (C, h, w) template over a (C, h+2r, w+2r) search window.

    Entry [r+dy, r+dx] compares the template with the search window displaced by (dx, dy),
    i.e. a template pixel (x, y) with search pixel (x + r + dx, y + r + dy). All channels
    count as one long vector. Shifts where less than ``min_overlap`` of the template's valid
    pixels overlap valid search pixels get -inf. Only the cross term needs one FFT per
    channel: the other sums are linear in the channels, so they are correlations of channel sums.
    """
    c, h, w = template.shape
    H, W = search.shape[1:]
    if H != h + 2 * radius or W != w + 2 * radius:
        raise ValueError(f"search window {H}x{W} must be template {h}x{w} plus 2*radius={2 * radius}")
    shape = fft_shape((h, w), radius)
    return ncc_from_spectra(spectra(template, tmask, shape), spectra(search, smask, shape), radius, min_overlap)


@dataclass(frozen=True)
class Peak:
    """Best displacement in a correlation surface, with how much to trust it.

    ``dx, dy``: sub-pixel displacement (pixels); ``score``: NCC at the peak; ``second``: best
    NCC outside the peak's neighbourhood; ``distinct``: (score - second) / (score - median),
    0 for an ambiguous surface, towards 1 for a single sharp peak; ``on_edge``: the peak
    touches the search border (the true shift may lie outside the search radius); ``z``: the
    peak's height over the surface's median in robust standard deviations (MAD), which for
    unrelated images stays near the extreme-value level of noise (about 4-5).
    """

    dx: float
    dy: float
    score: float
    second: float
    distinct: float
    on_edge: bool
    z: float = 0.0
    significance: float = 0.0


def find_peak(surface: np.ndarray, exclude: int = 2, null: np.ndarray | None = None) -> Peak:
    """Integer peak refined by a 1-D parabola fit along x and y; the runner-up is the best other
    local maximum outside a (2*exclude+1)^2 box around it."""
    r = surface.shape[0] // 2
    finite = np.isfinite(surface)
    if not finite.any():
        return Peak(0.0, 0.0, -1.0, -1.0, 0.0, True)
    s = np.where(finite, surface, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(s)), s.shape)
    score = float(s[iy, ix])

    def parabola(m1: float, c0: float, p1: float) -> float:
        if not (np.isfinite(m1) and np.isfinite(p1)):
            return 0.0
        den = m1 - 2 * c0 + p1
        return float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5)) if den < 0 else 0.0

    n = s.shape[0]
    on_edge = ix in (0, n - 1) or iy in (0, n - 1)
    fx = parabola(s[iy, ix - 1], score, s[iy, ix + 1]) if 0 < ix < n - 1 else 0.0
    fy = parabola(s[iy - 1, ix], score, s[iy + 1, ix]) if 0 < iy < n - 1 else 0.0
    # runner-up: the best *other local maximum* (not the slope of the main lobe), away from
    # the peak and from the border (where the window only clips a slope)
    filled = np.where(finite, s, np.nanmin(np.where(finite, s, np.nan)))
    is_max = (ndimage.maximum_filter(filled, size=3, mode="nearest") == filled) & finite
    is_max[[0, -1], :] = False
    is_max[:, [0, -1]] = False
    is_max[max(0, iy - exclude) : iy + exclude + 1, max(0, ix - exclude) : ix + exclude + 1] = False
    second = float(filled[is_max].max()) if is_max.any() else float(np.median(s[finite]))
    vals = s[finite]
    med = float(np.median(vals))
    mad = 1.4826 * float(np.median(np.abs(vals - med)))
    distinct = float(np.clip((score - second) / max(score - med, EPS), 0.0, 1.0))
    z = (score - med) / max(mad, EPS)
    sig = 0.0
    if null is not None and np.isfinite(null).any():
        nv = null[np.isfinite(null)]
        nmed = float(np.median(nv))
        sig = (score - nmed) / max(float(nv.max()) - nmed, EPS)
    return Peak(ix - r + fx, iy - r + fy, score, second, distinct, bool(on_edge), float(z), float(sig))
