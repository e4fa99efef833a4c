r"""Seeded random weight ensembles for parameter sweeps.

:func:`random_weights` draws the query, key and value matrices of the random-weight
studies of self-attention dynamics, one model or a batch of B models at once, in the form
the attention constructors take (``tp.SoftmaxAttention(beta, **weights)``). With
:math:`G, G_1, G_2` independent :math:`d \times d` matrices of i.i.d. standard normal
entries:

================== ================================== ================================
kind               Q, K                               V
================== ================================== ================================
gaussian-product   identity (None)                    :math:`G_1 G_2 / \sqrt d`
goe                identity (None)                    :math:`(G + G^\top) / \sqrt{2d}`
psd                identity (None)                    :math:`G G^\top / \sqrt d`
kq                 :math:`G_1/\sqrt d,\ G_2/\sqrt d`  :math:`K^\top Q`
-kq                :math:`G_1/\sqrt d,\ G_2/\sqrt d`  :math:`-K^\top Q`
================== ================================== ================================

Scalings: the Gaussian product has entries of variance 1; the GOE matrix has
off-diagonal entries of variance :math:`1/d` and diagonal ones of variance :math:`2/d`,
so its spectrum fills the semicircle on :math:`[-2, 2]` as d grows (the standard GOE
normalisation); ``psd`` is symmetric positive semi-definite with
:math:`\mathbb E\,V = \sqrt d\, I`; for ``kq`` the logits
:math:`\langle Qx, Ky\rangle = \langle x, Q^\top K y\rangle` and the value map
:math:`V = \pm K^\top Q` are built from the same two matrices (docs/math.md §3.5: the
value map aligned or anti-aligned with the attention form).
"""

from __future__ import annotations

import numpy as np

from . import _validation as _v

__all__ = ["random_weights", "WEIGHT_KINDS"]

#: the kinds :func:`random_weights` draws
WEIGHT_KINDS = ("gaussian-product", "goe", "psd", "kq", "-kq")


def random_weights(kind: str, d: int, rng, batch: int | None = None) -> dict:
    r"""Random query, key and value matrices of one of the standard ensembles.

    .. math::

        V = \frac{G_1G_2}{\sqrt d},\quad V = \frac{G + G^\top}{\sqrt{2d}},\quad
        V = \frac{GG^\top}{\sqrt d}\quad (Q = K = I),\qquad
        Q = \frac{G_1}{\sqrt d},\ K = \frac{G_2}{\sqrt d},\ V = \pm K^\top Q,

    for the kinds "gaussian-product", "goe", "psd" and "kq" / "-kq", with
    :math:`G, G_1, G_2` independent matrices of i.i.d. :math:`\mathcal N(0, 1)` entries
    (module docstring for the scalings).

    Parameters
    ----------
    kind : {"gaussian-product", "goe", "psd", "kq", "-kq"}
        The ensemble.
    d : int
        Token dimension (the matrices are d x d).
    rng : numpy.random.Generator or int or None
        Source of the draws (a seed makes them reproducible).
    batch : int, optional
        Number B of independent draws, stacked on a leading axis; one draw when None.

    Returns
    -------
    dict
        ``{"Q": ..., "K": ..., "V": ...}`` with arrays of shape (d, d), or (B, d, d) with
        ``batch``; ``Q`` and ``K`` are None (the identity) for the kinds that draw only V.
        Pass it to an attention constructor as ``**weights``: with ``batch`` the model is
        batched and takes states (B, n, d) in :func:`~transformer_pde.simulate`.

    Raises
    ------
    ValueError
        If ``kind`` is unknown or ``d``, ``batch`` are not positive.
    TypeError
        If ``d``, ``batch`` are not integers or ``rng`` is not a generator or seed.

    Examples
    --------
    >>> import numpy as np
    >>> import transformer_pde as tp
    >>> w = tp.random_weights("goe", 3, rng=0)
    >>> w["V"].shape, w["Q"] is None, bool(np.allclose(w["V"], w["V"].T))
    ((3, 3), True, True)
    >>> w = tp.random_weights("-kq", 2, rng=1, batch=4)
    >>> w["V"].shape, bool(np.allclose(w["V"], -np.swapaxes(w["K"], 1, 2) @ w["Q"]))
    ((4, 2, 2), True)
    >>> att = tp.SoftmaxAttention(beta=1.0, **w)          # a batch of 4 models
    >>> att.batch
    4
    """
    _v.as_choice(kind, "kind", WEIGHT_KINDS)
    d = _v.as_positive_int(d, "d")
    if batch is not None:
        batch = _v.as_positive_int(batch, "batch")
    rng = _v.as_rng(rng)
    shape = (d, d) if batch is None else (batch, d, d)

    def gauss():
        return rng.standard_normal(shape)

    def t(a):
        return np.swapaxes(a, -1, -2)

    if kind == "gaussian-product":
        return {"Q": None, "K": None, "V": gauss() @ gauss() / np.sqrt(d)}
    if kind == "goe":
        g = gauss()
        return {"Q": None, "K": None, "V": (g + t(g)) / np.sqrt(2.0 * d)}
    if kind == "psd":
        g = gauss()
        return {"Q": None, "K": None, "V": g @ t(g) / np.sqrt(d)}
    q, k = gauss() / np.sqrt(d), gauss() / np.sqrt(d)
    sign = 1.0 if kind == "kq" else -1.0
    return {"Q": q, "K": k, "V": sign * (t(k) @ q)}
