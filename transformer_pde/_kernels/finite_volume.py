r"""Numba kernels for the finite-volume right-hand side of the grid PDE (private).

The readable NumPy version of the same right-hand side is
``transformer_pde.meanfield.solver._FiniteVolume.evaluate_reference``; the tests check that
both agree to round-off on every grid. With :math:`\rho_f^\mp` the limited face values,
:math:`u_f` the normal face velocity, :math:`|f|` the face size and :math:`|c|` the cell
volume,

.. math::

    F_f = |f|\,(u_f^+\rho_f^- + u_f^-\rho_f^+) + D_f(\rho_{l(f)} - \rho_{r(f)}), \qquad
    \frac{d\rho_c}{dt} = -\frac{1}{|c|}\sum_{f \ni c} \pm F_f,

with :math:`D_f = |f|/(\kappa\,\delta_f)` the two-point diffusion coefficient (0 without
noise), and the outflow rate per cell
:math:`(\sum_{f\ni c}|f|(u_f\cdot n_{f,c})^+ + D_f)/|c|`, whose maximum bounds the step.

- :func:`periodic_rhs` is the fused step of the circle grids (``CircleGrid``, the fibres of
  ``CausalCircleGrid``): MC-limited reconstruction, upwind fluxes, diffusion, update and
  the largest outflow rate in one pass over the cells of each periodic row.
- :func:`face_rhs` is the same update for any face list (sphere, Cartesian boxes) from
  reconstructed face values.
- :func:`packed_spectrum` and :func:`decimated_spectra` are the
  products between the transforms of the circle's fast field path (full or band-limited):
  the spectrum of the complex signal :math:`Z + iN`, both real convolutions in one, so that
  one complex inverse FFT gives both; :func:`softmax_quotient` forms
  :math:`u_f = N_f / Z_f` from them and marks the faces it must hand over to quadrature.
- :func:`decay_rows` tabulates the shifted exponential weights of the tensor-grid
  quadrature of a Cartesian grid.
- :func:`ssp_combine` and :func:`min_and_mass` are the Runge-Kutta stage combination and
  the check of a new state, each one pass instead of several NumPy temporaries;
  :func:`ssp_combine_checked` is both in one pass, and :func:`periodic_softmax_stage` the
  whole circle stage (quotient, right-hand side, combination and check) in one call.

The circle lane's kernels that fill an output array return nothing (boxing a returned
array calls back into Python, ~1 us a call). A non-finite face velocity makes the returned
rate NaN (the solver then stops and says where). Kernels trust their inputs: the solver
validates.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["periodic_rhs", "face_rhs", "packed_spectrum", "softmax_quotient", "ssp_combine",
           "ssp_combine_checked", "min_and_mass", "max_abs_and_change", "decay_rows", "decimated_spectra",
           "periodic_softmax_stage"]

#: serial on purpose: one pass over a few thousand cells costs microseconds, less than
#: waking a thread pool; ``nogil`` so that other Python threads can run beside it
_JIT = dict(cache=True, nogil=True, error_model="numpy")
#: the same, for the kernels whose loops are sums or maxima: reassociation lets those
#: vectorise (a different order of the same sum; IEEE infinities and NaNs are kept)
_JIT_SUMS = dict(_JIT, fastmath={"reassoc"})


@numba.njit(inline="always")
def _mc_slope(minus, plus):
    """Van Leer's MC-limited slope from the one-sided differences (grids.mc_slopes)."""
    central = 0.5 * (minus + plus)
    mag = min(abs(central), 2.0 * min(abs(minus), abs(plus)))
    signed = mag if central > 0.0 else -mag
    return signed if minus * plus > 0.0 else 0.0


@numba.njit(inline="always")
def _upwind(area, uf, lo, hi):
    return area * (max(uf, 0.0) * lo + min(uf, 0.0) * hi)


@numba.njit(nogil=True, error_model="numpy")
def _max_nonnegative(x):
    """max(x) for nonnegative x (0 for an empty x), compared as the integers of their bits.

    The bits of doubles >= 0 are ordered as their values, and an integer maximum
    vectorises where a floating-point one (with its NaN semantics) does not (4.5x measured
    at 4096 values). A NaN in x gives a NaN or is passed over: callers test finiteness
    apart. ``x`` is overwritten in its first entry (scratch).
    """
    if x.shape[0] == 0:
        return 0.0
    bits = x.view(np.int64)
    best = 0
    for k in range(bits.shape[0]):
        b = bits[k]
        best = b if b > best else best
    bits[0] = best
    return x[0]


@numba.njit(nogil=True, error_model="numpy")
def _min_bits(x):
    """min(x) (inf for an empty x) by the integer order of the bits, flipped for negatives.

    With ``key = b ^ ((b >> 63) & 0x7FF..F)`` the keys of doubles are ordered as their values
    (-0.0 just below +0.0), and the integer minimum vectorises. NaNs: callers test apart.
    Returns the value itself (from the key, by the same involution).
    """
    bits = x.view(np.int64)
    low = 0x7FF0000000000000  # the key of +inf
    for k in range(bits.shape[0]):
        b = bits[k]
        key = b ^ ((b >> 63) & 0x7FFFFFFFFFFFFFFF)
        low = key if key < low else low
    out = np.empty(1, dtype=np.int64)
    out[0] = low ^ ((low >> 63) & 0x7FFFFFFFFFFFFFFF)
    return out.view(np.float64)[0]


@numba.njit(nogil=True, error_model="numpy")
def _row_slopes(r, slope):
    m = r.shape[0]
    slope[0] = _mc_slope(r[0] - r[m - 1], r[1] - r[0])
    for c in range(1, m - 1):
        slope[c] = _mc_slope(r[c] - r[c - 1], r[c + 1] - r[c])
    slope[m - 1] = _mc_slope(r[m - 1] - r[m - 2], r[0] - r[m - 1])


@numba.njit(nogil=True, error_model="numpy")
def _row_fluxes(r, u, areas, coef, slope, flux):
    m = r.shape[0]
    flux[0] = _upwind(areas[0], u[0], r[m - 1] + 0.5 * slope[m - 1], r[0] - 0.5 * slope[0])
    for c in range(1, m):
        flux[c] = _upwind(areas[c], u[c], r[c - 1] + 0.5 * slope[c - 1], r[c] - 0.5 * slope[c])
    if coef.shape[0] > 0:
        flux[0] += coef[0] * (r[m - 1] - r[0])
        for c in range(1, m):
            flux[c] += coef[c] * (r[c - 1] - r[c])


@numba.njit(nogil=True, error_model="numpy", fastmath={"reassoc"})
def _row_update(u, areas, inv_vol, coef, flux, change, outflow):
    """change from the fluxes; returns max outflow rate, NaN if a face velocity is not finite.

    ``inv_vol``: the reciprocal cell volumes (a multiplication vectorises at a fraction of
    the cost of a division; the result differs from dividing by at most one rounding).
    """
    m = u.shape[0]
    for c in range(m - 1):
        change[c] = (flux[c] - flux[c + 1]) * inv_vol[c]
        outflow[c] = (areas[c + 1] * max(u[c + 1], 0.0) + areas[c] * max(-u[c], 0.0)) * inv_vol[c]
    change[m - 1] = (flux[m - 1] - flux[0]) * inv_vol[m - 1]
    outflow[m - 1] = (areas[0] * max(u[0], 0.0) + areas[m - 1] * max(-u[m - 1], 0.0)) * inv_vol[m - 1]
    if coef.shape[0] > 0:
        for c in range(m - 1):
            outflow[c] += (coef[c] + coef[c + 1]) * inv_vol[c]
        outflow[m - 1] += (coef[m - 1] + coef[0]) * inv_vol[m - 1]
    probe = 0.0  # sum of u * 0: NaN as soon as one face velocity is not finite
    for c in range(m):
        probe += u[c] * 0.0
    if probe != 0.0:
        return np.nan
    return _max_nonnegative(outflow)  # the outflow rates are >= 0


@numba.njit(nogil=True, error_model="numpy")
def _periodic(rho, u, areas, inv_vol, coef, change, slope, flux):
    """:func:`periodic_rhs` with the reciprocal cell volumes."""
    n_rows, m = rho.shape
    rate = 0.0
    finite = True
    for s in range(n_rows):
        b, e = s * m, (s + 1) * m
        row_coef = coef[b:e] if coef.shape[0] > 0 else coef
        _row_slopes(rho[s], slope)
        _row_fluxes(rho[s], u[b:e], areas[b:e], row_coef, slope, flux)
        r = _row_update(u[b:e], areas[b:e], inv_vol[b:e], row_coef, flux, change[b:e], slope)
        finite = finite and r == r
        rate = max(rate, r)
    return rate if finite else np.nan


@numba.njit(**_JIT)
def periodic_rhs(rho, u, areas, vol, coef, change, slope, flux):
    """d rho / dt on periodic rows; returns the largest outflow rate per cell volume.

    ``rho`` (S, M): cell values, row by row; face ``s * M + c`` lies between cells
    ``c - 1`` and ``c`` of row s (periodic). ``u``, ``areas`` (S * M,): normal velocity
    and size of each face; ``vol`` (S * M,): cell volumes; ``coef`` (S * M,) the
    diffusion coefficient of each face or an empty array (no diffusion). ``change``
    (S * M,) receives d rho / dt; ``slope`` and ``flux`` (M,) are scratch. Each pass
    (slopes, fluxes, update) is a loop over the interior of a row without index
    arithmetic, so that it vectorises; the wrap-around cells are done apart.
    """
    return _periodic(rho, u, areas, 1.0 / vol, coef, change, slope, flux)


@numba.njit(**_JIT)
def face_rhs(rho, u, lo, hi, areas, left, right, vol, coef, change):
    """d rho / dt from a face list; returns the largest outflow rate per cell volume.

    ``rho`` (N,) cell values; per face f (F,): ``u`` normal velocity, ``lo``/``hi`` the
    reconstructed values on the side of ``left[f]``/``right[f]`` (``right[f] == -1``: a
    boundary face, whose flux leaves the grid), ``areas`` the face size, ``coef`` the
    diffusion coefficient (0 on boundary faces) or an empty array. ``vol`` (N,) cell
    volumes; ``change`` (N,) receives d rho / dt.
    """
    n = rho.shape[0]
    diffuse = coef.shape[0] > 0
    outflow = np.zeros(n)
    finite = True
    for c in range(n):
        change[c] = 0.0
    for f in range(u.shape[0]):
        uf = u[f]
        if not np.isfinite(uf):
            finite = False
        up = max(uf, 0.0)
        um = min(uf, 0.0)
        flux = areas[f] * (up * lo[f] + um * hi[f])
        lc, rc = left[f], right[f]
        outflow[lc] += areas[f] * up
        if rc >= 0:
            outflow[rc] -= areas[f] * um
            if diffuse:
                flux += coef[f] * (rho[lc] - rho[rc])
                outflow[lc] += coef[f]
                outflow[rc] += coef[f]
            change[rc] += flux
        change[lc] -= flux
    rate = 0.0
    for c in range(n):
        change[c] /= vol[c]
        r = outflow[c] / vol[c]
        if r > rate:
            rate = r
    return rate if finite else np.nan


@numba.njit(**_JIT)
def packed_spectrum(fa, spectra, out):
    r"""The spectrum of Z + iN, both convolutions of each row of masses in one complex signal.

    ``fa`` (R, M//2 + 1): real FFTs of the rows of masses; ``spectra`` (2, M//2 + 1): those
    of the two kernel samples (Z, N). ``out`` (R, M) receives the full DFT of
    :math:`Z + iN`: :math:`\hat Z_k + i\hat N_k` at k and, Z and N being real,
    :math:`\overline{\hat Z_k} + i\,\overline{\hat N_k}` at M - k (the real parts alone at
    k = 0 and, M even, k = M/2, where a real signal's coefficients are real), so that one
    complex inverse FFT gives Z in the real part and N in the imaginary part.
    """
    m = out.shape[1]
    for r in range(fa.shape[0]):
        for k in range(fa.shape[1]):
            z = fa[r, k] * spectra[0, k]
            n = fa[r, k] * spectra[1, k]
            if k == 0 or 2 * k == m:
                out[r, k] = complex(z.real, n.real)
            else:
                out[r, k] = complex(z.real - n.imag, z.imag + n.real)
                out[r, m - k] = complex(z.real + n.imag, n.real - z.imag)


@numba.njit(**_JIT_SUMS)
def softmax_quotient(zn, a, factor, u, bad):
    """u = N / Z per face where Z >= factor * sum(a of the row) and the quotient is finite;
    else u = 0 and ``bad`` set. ``zn`` (R, M) complex: Z + iN of each row; ``a`` (R, M) the
    row masses; ``u``, ``bad`` (R * M,). Returns the number of bad faces.

    ``bad`` is written only when a face is bad (its second pass repeats the same test); the
    complex values are read as pairs of doubles, which vectorises.
    """
    m = zn.shape[1]
    z = zn.view(np.float64)  # (R, 2M): Z, N, Z, N, ...
    n_rows = zn.shape[0]
    tau = np.empty(n_rows)
    count = 0
    for r in range(n_rows):
        total = 0.0
        for c in range(a.shape[1]):
            total += a[r, c]
        tau[r] = factor * total
        t = tau[r]
        for c in range(m):  # branch-free, so that it vectorises
            zc = z[r, 2 * c]
            q = z[r, 2 * c + 1] / zc
            ok = (zc >= t) & (abs(q) < np.inf)
            u[r * m + c] = q if ok else 0.0
            count += 0 if ok else 1
    if count:
        for r in range(n_rows):
            for c in range(m):
                zc = z[r, 2 * c]
                q = z[r, 2 * c + 1] / zc
                bad[r * m + c] = not ((zc >= tau[r]) & (abs(q) < np.inf))
    return count


@numba.njit(**_JIT)
def ssp_combine(ca, x, cb, y, h, dy, out):
    """out = ca * x + cb * (y + h * dy), elementwise (a stage of SSP Runge-Kutta).

    Returns nothing: returning an array costs a call back into Python to box it (~1 us).
    """
    for k in range(x.shape[0]):
        out[k] = ca * x[k] + cb * (y[k] + h * dy[k])


@numba.njit(**_JIT_SUMS)
def ssp_combine_checked(ca, x, cb, y, h, dy, out, vol):
    """:func:`ssp_combine`, returning :func:`min_and_mass` of ``out`` from the same pass."""
    mass = 0.0
    probe = 0.0
    for k in range(x.shape[0]):
        v = ca * x[k] + cb * (y[k] + h * dy[k])
        out[k] = v
        mass += v * vol[k]
        probe += v * 0.0
    return _min_bits(out), mass, probe == 0.0


@numba.njit(**_JIT_SUMS)
def min_and_mass(x, vol):
    """(min x, sum x * vol, all finite): one pass for the sums, one for the minimum."""
    mass = 0.0
    probe = 0.0  # sum of x * 0: NaN as soon as one value is not finite
    for k in range(x.shape[0]):
        v = x[k]
        mass += v * vol[k]
        probe += v * 0.0
    return _min_bits(x), mass, probe == 0.0


@numba.njit(**_JIT_SUMS)
def max_abs_and_change(u, u_prev):
    """(max |u_prev|, max |u - u_prev|): how large the face velocities were and how much
    they changed over a step (both NaN if a value is not finite)."""
    n = u.shape[0]
    size = np.empty(n)
    change = np.empty(n)
    probe = 0.0
    for k in range(n):
        d = abs(u[k] - u_prev[k])
        size[k] = abs(u_prev[k])
        change[k] = d
        probe += d * 0.0
    if probe != 0.0:
        return np.nan, np.nan
    return _max_nonnegative(size), _max_nonnegative(change)


@numba.njit(**_JIT)
def decay_rows(c, step, out):
    """out[b, i] = exp(-|c_b| step k), k = i from the start (c_b <= 0) or from the end (c_b > 0).

    The log-sum-exp-shifted weights exp(c_b g_i - max_i c_b g_i) of an axis of equal
    steps g_i = g_0 + i step. Each entry is exp(-t 8j) exp(-t r) with k = 8j + r, so a row
    of m entries costs m/8 + 8 exponentials (two roundings more than one exponential).
    """
    m = out.shape[1]
    fine = np.empty(8)
    for b in range(c.shape[0]):
        t = abs(c[b]) * step
        for r in range(8):
            fine[r] = np.exp(-t * r)
        flip = c[b] > 0.0
        for j in range(0, m, 8):
            coarse = np.exp(-t * j)
            for r in range(min(8, m - j)):
                k = j + r
                out[b, m - 1 - k if flip else k] = coarse * fine[r]
    return out


@numba.njit(**_JIT_SUMS)
def decimated_spectra(b, twiddle, spectra, modes, out):
    r"""The spectra of the P decimated subsequences of Z + iN, from those of the masses.

    ``b`` (S, L/2 + 1, P): DFTs of length L of the P decimated subsequences
    ``a[s, q P + r]`` (r fixed) of each row of masses; ``twiddle`` (2, K, P): the real and
    imaginary parts of :math:`e^{-2\pi i k r / M}`; ``spectra`` (2, K): the K lowest DFT
    coefficients of the two kernel samples (Z, N), divided by M. First the K lowest DFT
    coefficients of the rows, ``modes[s, k] = sum_r twiddle[k, r] b[s, k, r]``, then with
    :math:`z = \hat a_k \hat w^Z_k e^{2\pi ikr/M}` and n likewise,
    ``out[s, k, r] = z + i n`` and ``out[s, L - k, r] = conj(z) + i conj(n)`` (k < K; the
    real parts alone at k = 0), whose inverse DFTs of length L along k are Z + iN at the
    faces ``q P + r``; the rows K .. L - K of ``out`` are set to 0 (L >= 2K - 1), so that the
    inverse transform may run in place. Complex arrays are read and written as pairs of
    doubles (it vectorises).
    """
    n_k, n_r = twiddle.shape[1], twiddle.shape[2]
    length = out.shape[1]
    o = out.view(np.float64)  # (S, L, 2P)
    bb = b.view(np.float64)  # (S, L/2 + 1, 2P)
    tr, ti = twiddle[0], twiddle[1]
    for s in range(b.shape[0]):
        for k in range(n_k, length - n_k + 1):
            for j in range(2 * n_r):
                o[s, k, j] = 0.0
        for k in range(n_k):
            ar = 0.0
            ai = 0.0
            for r in range(n_r):
                xr = bb[s, k, 2 * r]
                xi = bb[s, k, 2 * r + 1]
                ar += tr[k, r] * xr - ti[k, r] * xi
                ai += tr[k, r] * xi + ti[k, r] * xr
            modes[s, k] = complex(ar, ai)
        z0 = modes[s, 0] * spectra[0, 0]
        n0 = modes[s, 0] * spectra[1, 0]
        for r in range(n_r):
            o[s, 0, 2 * r] = z0.real
            o[s, 0, 2 * r + 1] = n0.real
        for k in range(1, n_k):
            zk = modes[s, k] * spectra[0, k]
            nk = modes[s, k] * spectra[1, k]
            zr, zi, nr, ni = zk.real, zk.imag, nk.real, nk.imag
            for r in range(n_r):
                cr = tr[k, r]  # conj(twiddle): e^{+2 pi i k r / M}
                ci = -ti[k, r]
                z_re = zr * cr - zi * ci
                z_im = zr * ci + zi * cr
                n_re = nr * cr - ni * ci
                n_im = nr * ci + ni * cr
                o[s, k, 2 * r] = z_re - n_im
                o[s, k, 2 * r + 1] = z_im + n_re
                o[s, length - k, 2 * r] = z_re + n_im
                o[s, length - k, 2 * r + 1] = n_re - z_im


@numba.njit(**_JIT)
def periodic_softmax_stage(zn, a, factor, rho, areas, vol, inv_vol, coef, change, slope, flux, u, bad,
                           ca, x, cb, h, out, masses):
    """:func:`softmax_quotient`, then if no face is bad :func:`periodic_rhs` and the Runge-Kutta
    stage :func:`ssp_combine_checked` ``out = ca * x + cb * (rho + h * change)``, in one call.

    ``inv_vol`` is ``1 / vol``. Returns ``(n_bad, rate, min out, sum out * vol, out finite)``;
    with ``n_bad > 0`` the
    rate is NaN and neither ``change`` nor ``out`` is written (the caller hands the bad faces
    over, calls :func:`periodic_rhs` and combines). Otherwise ``masses`` (its entries may be
    those of ``a``: they are read before) receives ``out * vol``, the masses of the next
    evaluation. With ``cb = 0`` it is the right-hand side alone: neither ``out`` nor
    ``masses`` is written and the last three values are (NaN, NaN, False).
    """
    n_bad = softmax_quotient(zn, a, factor, u, bad)
    if n_bad:
        return n_bad, np.nan, np.nan, np.nan, False
    rate = _periodic(rho, u, areas, inv_vol, coef, change, slope, flux)
    if cb == 0.0:
        return 0, rate, np.nan, np.nan, False
    lowest, mass, finite = ssp_combine_checked(ca, x, cb, rho.ravel(), h, change, out, vol)
    for k in range(out.shape[0]):  # the masses of the next evaluation, which is at out
        masses[k] = out[k] * vol[k]
    return 0, rate, lowest, mass, finite
