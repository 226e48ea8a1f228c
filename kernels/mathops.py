"""Small 3x3 linear algebra for the solvers, with hand-written derivatives.

Everything here is a ``@ti.func`` working in the runtime's default float type.

* :func:`svd3` -- one-sided (Hestenes) Jacobi SVD, accurate to machine precision in f64
  (Taichi's built-in ``ti.svd`` stops at ~1e-10, too coarse for f64 gradient checks).
  ``F = U diag(s) V^T`` with ``U`` and ``V`` proper rotations, ``s`` sorted by decreasing
  magnitude; ``s[2]`` is negative for inverted ``F`` (``det F < 0``).
* :func:`sym_eig3` -- cyclic Jacobi eigen-decomposition of a symmetric 3x3 matrix, accurate
  relative to the matrix's own norm (for ``b - I`` of a nearly undeformed body: eigenvalues
  ~1e-5 resolved to ~1e-12 in f32, where forming ``I + small`` would keep ~1e-7).
* :func:`log1p`, :func:`expm1` -- ``log(1 + x)`` and ``exp(x) - 1`` without cancellation
  (Taichi compiles with fast-math, so the usual ``(1 + x) - 1`` tricks are not safe).
* :func:`polar_rotation` -- rotation ``R`` of ``F = R S`` (scaled Newton iteration, SVD
  fallback for inverted ``F``).
* :func:`polar_rotation_vjp` -- adjoint of ``R(F)``: no division by ``s_i - s_j``; only
  ``(tr S) I - S`` is inverted, which is well conditioned unless two singular values sum
  to zero.
* :func:`spectral_vjp` -- adjoint of an isotropic matrix function ``G(F) = U diag(g(s)) V^T``
  given ``g``'s Jacobian and its divided differences ``(g_i - g_j)/(s_i - s_j)``; the
  caller computes those in a form that stays accurate for close ``s_i``, ``s_j``
  (:func:`divided_difference` is the generic fallback; :func:`log_ratio_over` and
  :func:`expm1_over` serve log-strain models), so equal singular values (a body at rest)
  are safe.
"""
import taichi as ti


@ti.func
def eps_real():
    """Machine epsilon of the default float type."""
    e = 1.2e-7
    if ti.static(ti.lang.impl.get_runtime().default_fp == ti.f64):
        e = 2.3e-16
    return e


@ti.func
def cofactor(F):
    """Cofactor matrix ``det(F) F^-T`` (well defined for singular F)."""
    c0 = ti.Vector([F[0, 1], F[1, 1], F[2, 1]]).cross(ti.Vector([F[0, 2], F[1, 2], F[2, 2]]))
    c1 = ti.Vector([F[0, 2], F[1, 2], F[2, 2]]).cross(ti.Vector([F[0, 0], F[1, 0], F[2, 0]]))
    c2 = ti.Vector([F[0, 0], F[1, 0], F[2, 0]]).cross(ti.Vector([F[0, 1], F[1, 1], F[2, 1]]))
    return ti.Matrix.cols([c0, c1, c2])


@ti.func
def skew_axial(M):
    """Axial vector of the skew part of ``M``: ``w`` with ``(M - M^T)/2 = [w]_x``."""
    return 0.5 * ti.Vector([M[2, 1] - M[1, 2], M[0, 2] - M[2, 0], M[1, 0] - M[0, 1]])


@ti.func
def cross_matrix(w):
    """``[w]_x``, the skew matrix with ``[w]_x v = w x v``."""
    return ti.Matrix([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


@ti.func
def _jacobi_rotation(x, y, z):
    """Cosine and sine of the Jacobi rotation that zeroes ``z`` in the symmetric 2x2
    ``[[x, z], [z, y]]`` (the smaller of the two angles), and its tangent."""
    zeta = (y - x) / (2.0 * z)
    sgn = 1.0
    if zeta < 0.0:
        sgn = -1.0
    t = sgn / (ti.abs(zeta) + ti.sqrt(1.0 + zeta * zeta))
    c = 1.0 / ti.sqrt(1.0 + t * t)
    return c, c * t, t


@ti.func
def _rotate_columns(M, i: ti.template(), j: ti.template(), c, s):
    """Columns i and j of ``M`` rotated: ``(c m_i - s m_j, s m_i + c m_j)``."""
    for r in ti.static(range(3)):
        m_ri = M[r, i]
        m_rj = M[r, j]
        M[r, i] = c * m_ri - s * m_rj
        M[r, j] = s * m_ri + c * m_rj
    return M


@ti.func
def _jacobi_rotate(A, V, i: ti.template(), j: ti.template(), tol):
    """One Hestenes rotation making columns i and j of A orthogonal."""
    ai = ti.Vector([A[0, i], A[1, i], A[2, i]])
    aj = ti.Vector([A[0, j], A[1, j], A[2, j]])
    alpha = ai.dot(ai)
    beta = aj.dot(aj)
    gamma = ai.dot(aj)
    changed = 0
    if gamma * gamma > tol * tol * alpha * beta and gamma != 0.0:
        changed = 1
        c, s, _ = _jacobi_rotation(alpha, beta, gamma)
        A = _rotate_columns(A, i, j, c, s)
        V = _rotate_columns(V, i, j, c, s)
    return A, V, changed


@ti.func
def _swap_cols(M, i: ti.template(), j: ti.template()):
    for r in ti.static(range(3)):
        tmp = M[r, i]
        M[r, i] = M[r, j]
        M[r, j] = tmp
    return M


@ti.func
def svd3(F):
    """SVD of a 3x3 matrix: returns ``U, s, V`` (``s`` a 3-vector), ``F = U diag(s) V^T``.

    ``U`` and ``V`` are rotations (det +1); ``|s0| >= |s1| >= |s2|``; ``s2 < 0`` iff
    ``det F < 0``.
    """
    A = F
    V = ti.Matrix.identity(float, 3)
    tol = 4.0 * eps_real()
    for _ in range(12):
        A, V, c0 = _jacobi_rotate(A, V, 0, 1, tol)
        A, V, c1 = _jacobi_rotate(A, V, 0, 2, tol)
        A, V, c2 = _jacobi_rotate(A, V, 1, 2, tol)
        if c0 + c1 + c2 == 0:
            break
    n = ti.Vector([0.0, 0.0, 0.0])
    for k in ti.static(range(3)):
        n[k] = ti.sqrt(A[0, k] ** 2 + A[1, k] ** 2 + A[2, k] ** 2)
    # sort columns by decreasing norm
    if n[0] < n[1]:
        A = _swap_cols(A, 0, 1)
        V = _swap_cols(V, 0, 1)
        n[0], n[1] = n[1], n[0]
    if n[0] < n[2]:
        A = _swap_cols(A, 0, 2)
        V = _swap_cols(V, 0, 2)
        n[0], n[2] = n[2], n[0]
    if n[1] < n[2]:
        A = _swap_cols(A, 1, 2)
        V = _swap_cols(V, 1, 2)
        n[1], n[2] = n[2], n[1]
    if V.determinant() < 0.0:
        for r in ti.static(range(3)):
            V[r, 2] = -V[r, 2]
            A[r, 2] = -A[r, 2]
    U = ti.Matrix.identity(float, 3)
    tiny = 1e-30
    u0 = ti.Vector([A[0, 0], A[1, 0], A[2, 0]])
    if n[0] > tiny:
        u0 = u0 / n[0]
    else:
        u0 = ti.Vector([1.0, 0.0, 0.0])
    u1 = ti.Vector([A[0, 1], A[1, 1], A[2, 1]])
    if n[1] > n[0] * 1e3 * eps_real() and n[1] > tiny:
        u1 = u1 / n[1]
        u1 = u1 - u1.dot(u0) * u0
        u1 = u1.normalized()
    else:  # any unit vector orthogonal to u0
        trial = ti.Vector([1.0, 0.0, 0.0])
        if ti.abs(u0[0]) > 0.9:
            trial = ti.Vector([0.0, 1.0, 0.0])
        u1 = (trial - trial.dot(u0) * u0).normalized()
    u2 = u0.cross(u1)
    # signed smallest singular value: projection of the third column on u2
    s2 = A[0, 2] * u2[0] + A[1, 2] * u2[1] + A[2, 2] * u2[2]
    for r in ti.static(range(3)):
        U[r, 0] = u0[r]
        U[r, 1] = u1[r]
        U[r, 2] = u2[r]
    return U, ti.Vector([n[0], n[1], s2]), V


@ti.func
def _jacobi_sym_rotate(A, U, p: ti.template(), q: ti.template(), tol):
    """One Jacobi rotation of the symmetric ``A`` zeroing ``A[p, q]`` (columns of ``U``
    rotated alike)."""
    changed = 0
    apq = A[p, q]
    if ti.abs(apq) > tol:
        changed = 1
        c, s, t = _jacobi_rotation(A[p, p], A[q, q], apq)
        A[p, p] -= t * apq
        A[q, q] += t * apq
        A[p, q] = 0.0
        A[q, p] = 0.0
        r = ti.static(3 - p - q)
        arp = A[r, p]
        arq = A[r, q]
        A[r, p] = c * arp - s * arq
        A[p, r] = A[r, p]
        A[r, q] = s * arp + c * arq
        A[q, r] = A[r, q]
        U = _rotate_columns(U, p, q, c, s)
    return A, U, changed


@ti.func
def sym_eig3(A):
    """Eigenvalues ``w`` (3-vector, unsorted) and orthonormal eigenvectors ``U`` (columns)
    of the symmetric ``A``: ``A = U diag(w) U^T``. Off-diagonal entries are rotated away
    down to ``eps * |A|_F``, so eigenvalues are accurate to that absolute level."""
    U = ti.Matrix.identity(float, 3)
    tol = eps_real() * ti.sqrt(A.norm_sqr())
    for _ in range(12):
        A, U, c0 = _jacobi_sym_rotate(A, U, 0, 1, tol)
        A, U, c1 = _jacobi_sym_rotate(A, U, 0, 2, tol)
        A, U, c2 = _jacobi_sym_rotate(A, U, 1, 2, tol)
        if c0 + c1 + c2 == 0:
            break
    return ti.Vector([A[0, 0], A[1, 1], A[2, 2]]), U


@ti.func
def polar_rotation(F):
    """Rotation ``R`` of the polar decomposition ``F = R S`` (``det R = +1``).

    Scaled Newton iteration ``R <- (z R + R^-T / z) / 2`` for ``det F > 0`` (converges in
    3-6 iterations for usual deformations); the SVD (``R = U V^T``) for inverted or
    nearly singular ``F``.
    """
    R = F
    d = F.determinant()
    if d > 1e3 * eps_real() * (F.norm_sqr() ** 1.5 + 1e-30):
        tol = 10.0 * eps_real()
        for _ in range(30):
            z = ti.abs(R.determinant()) ** (-1.0 / 3.0)
            Rn = 0.5 * (z * R + R.inverse().transpose() / z)
            delta = (Rn - R).norm_sqr()
            R = Rn
            if delta < tol * tol:
                break
        # one unscaled step polishes to machine precision
        R = 0.5 * (R + R.inverse().transpose())
    else:
        U, s, V = svd3(F)
        R = U @ V.transpose()
    return R


@ti.func
def polar_rotation_vjp(R, F, R_bar):
    """Adjoint of ``F`` for ``R = polar_rotation(F)`` given ``R_bar = dL/dR``.

    With ``S = R^T F``, ``dR = R [w]_x`` and ``((tr S) I - S) w = 2 axial(R^T dF)``; its
    transpose gives ``F_bar = R [y]_x`` with ``((tr S) I - S) y = 2 axial(R^T R_bar)``.
    """
    S = R.transpose() @ F
    S = 0.5 * (S + S.transpose())
    K = S.trace() * ti.Matrix.identity(float, 3) - S
    m = 2.0 * skew_axial(R.transpose() @ R_bar)
    # K's eigenvalues are the pairwise sums s_i + s_j: near zero only for an inverted F
    # whose rotation is ill-defined; regularise there instead of dividing by ~0.
    scale = ti.sqrt(K.norm_sqr()) + 1e-30
    if ti.abs(K.determinant()) < 1e-6 * scale ** 3:
        K += 1e-2 * scale * ti.Matrix.identity(float, 3)
    y = K.inverse() @ m
    return R @ cross_matrix(y)


@ti.func
def divided_difference(gi, gj, si, sj, limit):
    """``(gi - gj) / (si - sj)``, or ``limit`` when ``si`` and ``sj`` are too close."""
    d = si - sj
    r = limit
    if ti.abs(d) > eps_real() ** 0.5 * (ti.abs(si) + ti.abs(sj) + 1e-30):
        r = (gi - gj) / d
    return r


@ti.func
def atanh_over(z):
    """``atanh(z) / z`` (series for small ``|z|``, where the quotient would cancel)."""
    z2 = z * z
    r = 1.0 + z2 * (1.0 / 3.0 + z2 * (1.0 / 5.0 + z2 * (1.0 / 7.0 + z2 * (1.0 / 9.0 + z2 / 11.0))))
    if ti.abs(z) > 0.1:
        r = 0.5 * ti.log((1.0 + z) / (1.0 - z)) / z
    return r


@ti.func
def log1p(x):
    """``log(1 + x)`` for ``x > -1``, accurate for small ``|x|``: ``2 atanh(x / (2 + x))``."""
    z = x / (2.0 + x)
    return 2.0 * z * atanh_over(z)


@ti.func
def log_ratio_over(si, sj):
    """``log(si / sj) / (si - sj)`` for positive ``si``, ``sj``, accurate when they are
    close: ``2 atanh(z) / (si - sj)`` with ``z = (si - sj) / (si + sj)``."""
    z = (si - sj) / (si + sj)
    return 2.0 * atanh_over(z) / (si + sj)


@ti.func
def expm1_over(y):
    """``(exp(y) - 1) / y`` (series for small ``|y|``; 1 at ``y = 0``)."""
    r = 1.0 + y * (1.0 / 2.0 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (
        1.0 / 720.0 + y * (1.0 / 5040.0 + y / 40320.0))))))
    if ti.abs(y) > 0.1:
        r = (ti.exp(y) - 1.0) / y
    return r


@ti.func
def expm1(y):
    """``exp(y) - 1``, accurate for small ``|y|``."""
    return y * expm1_over(y)


@ti.func
def sum_quotient(gi, gj, si, sj):
    """``(gi + gj) / (si + sj)`` with the denominator clamped away from zero."""
    d = si + sj
    floor = 1e-6
    if ti.abs(d) < floor:
        d = floor if d >= 0.0 else -floor
    return (gi + gj) / d


@ti.func
def spectral_vjp(U, s, V, g, Jg, G_bar, dd):
    """Adjoint of ``F`` for ``G = U diag(g(s)) V^T`` where ``F = U diag(s) V^T``.

    Args:
        U, s, V: SVD of F.
        g: ``g(s)``, a 3-vector; must be an isotropic (permutation-symmetric) function.
        Jg: 3x3 Jacobian ``dg_i/ds_j``.
        G_bar: adjoint of G.
        dd: 3x3 divided differences ``dd[i, j] = (g_j - g_i) / (s_j - s_i)`` (i != j; the
            limit where they coincide).
    Returns ``F_bar`` (3x3) and ``gbar_diag`` (3-vector: the adjoint of ``g`` itself,
    for parameter derivatives ``dg/dtheta``).
    """
    M = U.transpose() @ G_bar @ V
    d = ti.Vector([M[0, 0], M[1, 1], M[2, 2]])
    P = ti.Matrix.zero(float, 3, 3)
    sbar = Jg.transpose() @ d
    for i in ti.static(range(3)):
        P[i, i] = sbar[i]
    for i, j in ti.static([(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)]):
        A = dd[i, j]
        B = sum_quotient(g[j], g[i], s[j], s[i])
        # dG_ij = (A + B)/2 dP_ij + (A - B)/2 dP_ji  (rotated frame)
        P[i, j] += 0.5 * (A + B) * M[i, j]
        P[j, i] += 0.5 * (A - B) * M[i, j]
    return U @ P @ V.transpose(), d
